//! Plan findings → diagnostics, aggregated by name pattern: the same problem in every
//! layer is one diagnostic, not forty-eight, and its positions are named by the mapping's
//! index variables ("for layer = 0…47, expert = 0…127") where its templates name them;
//! unclaimed tensors, which no template names, are grouped into ranges
//! (`model.layers.{0…47}.…`).

use std::collections::BTreeMap;

use crate::checkpoint::Dtype;
use crate::diag::{Code, Diagnostic, Diagnostics};
use crate::ir;

/// One problem binding one param.
#[derive(Clone, Debug)]
pub struct Issue {
    /// The IR path template (`layers.{layer}.attention.qkv`): the key into the span table.
    pub ir_path: String,
    /// The concrete target name.
    pub target: String,
    pub kind: IssueKind,
    /// The param's names with their index variables (its IR path, every tensor name its
    /// source reads): where a concrete name is located to say `for layer = 3, expert = 7`.
    pub templates: Vec<String>,
}

#[derive(Clone, Debug)]
pub enum IssueKind {
    Missing {
        tensors: Vec<String>,
        alternatives: Vec<String>,
    },
    Shape {
        tensor: Option<String>,
        expected: Vec<u64>,
        actual: Vec<u64>,
    },
    Parts {
        what: String,
        shapes: Vec<Vec<u64>>,
    },
    Dtype {
        tensor: String,
        dtype: Dtype,
        target: Dtype,
    },
    Tie {
        missing: bool,
        what: String,
    },
    /// The offload-group expression failed at these indices.
    Offload {
        message: String,
    },
    /// A pre-quantized source's codes or scales are not in its format's dtype.
    QuantDtype {
        tensor: String,
        dtype: Dtype,
        want: String,
    },
    /// A pre-quantized source's scales do not tile its codes by the declared block.
    ScaleShape {
        tensor: String,
        weight: Vec<u64>,
        block: [u64; 2],
        expected: Vec<u64>,
        actual: Vec<u64>,
    },
}

/// Replaces every all-digit dotted segment with `{n}`; returns the numbers too.
pub fn templatize(name: &str) -> (String, Vec<u64>) {
    let mut nums = Vec::new();
    let parts: Vec<String> = name
        .split('.')
        .map(|seg| match seg.parse::<u64>() {
            Ok(n) if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) => {
                nums.push(n);
                "{n}".to_string()
            }
            _ => seg.to_string(),
        })
        .collect();
    (parts.join("."), nums)
}

/// The tensor (or target) an issue is about.
fn subject(issue: &Issue) -> &str {
    match &issue.kind {
        IssueKind::Missing { tensors, .. } => tensors.first().map_or("", String::as_str),
        IssueKind::Shape {
            tensor: Some(t), ..
        }
        | IssueKind::Dtype { tensor: t, .. }
        | IssueKind::QuantDtype { tensor: t, .. }
        | IssueKind::ScaleShape { tensor: t, .. } => t,
        _ => &issue.target,
    }
}

/// A group of names as one pattern with ranges, and the true count when the ranges
/// over-cover: `model.layers.{0…47}.self_attn.k_proj.weight`.
fn grouped(pattern: &str, members: &[Vec<u64>]) -> (String, String) {
    let (name, count) = super::ranges::compact(pattern, members);
    (
        name,
        count.map_or(String::new(), |n| format!(" ({n} tensors)")),
    )
}

/// One problem across the indices it occurs at.
struct Group<'i> {
    ir_path: String,
    /// The subject with its index positions as holes: `{layer}` where the param's
    /// templates name the variable, else `{n}`.
    pattern: String,
    /// The variables of the holes, when named.
    vars: Option<Vec<String>>,
    members: Vec<Vec<u64>>,
    first: &'i Issue,
    /// Absent tensors in all the group's issues.
    missing: usize,
}

/// A name's pattern, index values and (when its param's templates name them) variables.
fn positions(name: &str, templates: &[String]) -> (String, Vec<u64>, Option<Vec<String>>) {
    match super::positions::locate(name, templates) {
        Some(l) => (l.template, l.values, Some(l.vars)),
        None => {
            let (pattern, nums) = templatize(name);
            (pattern, nums, None)
        }
    }
}

/// Counts one more param missing its tensors under the same prefix.
fn bump_count(d: &mut Diagnostic) {
    const TAIL: &str = " other param(s) under this prefix miss their tensors too";
    let n = d
        .notes
        .iter()
        .find_map(|n| n.strip_suffix(TAIL)?.parse::<usize>().ok())
        .unwrap_or(0);
    d.notes.retain(|n| !n.ends_with(TAIL));
    d.notes.push(format!("{}{TAIL}", n + 1));
}

fn show(s: &[u64]) -> String {
    format!(
        "[{}]",
        s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    )
}

/// Groups issues by (param, subject with its positions as holes), keeping first order.
/// A group counts the missing tensors of every issue in it: a stack missing 4 experts in
/// each of 3 layers misses 12, not 4 or 3.
fn group(issues: &[Issue]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group> = Vec::new();
    for issue in issues {
        // Every absent tensor of a stack is a member: the positions say which experts.
        let names: Vec<&str> = match &issue.kind {
            IssueKind::Missing { tensors, .. } if !tensors.is_empty() => {
                tensors.iter().map(String::as_str).collect()
            }
            _ => vec![subject(issue)],
        };
        let (key, _, vars) = positions(names[0], &issue.templates);
        let nums: Vec<Vec<u64>> = names
            .iter()
            .map(|n| positions(n, &issue.templates))
            .filter(|(k, _, _)| *k == key)
            .map(|(_, v, _)| v)
            .collect();
        let missing = match &issue.kind {
            IssueKind::Missing { tensors, .. } => tensors.len(),
            _ => 0,
        };
        match groups
            .iter_mut()
            .find(|g| g.ir_path == issue.ir_path && g.pattern == key)
        {
            Some(g) => {
                g.members.extend(nums);
                g.missing = g.missing.saturating_add(missing);
            }
            None => groups.push(Group {
                ir_path: issue.ir_path.clone(),
                pattern: key,
                vars,
                members: nums,
                first: issue,
                missing,
            }),
        }
    }
    groups
}

/// At most this many patterns of unclaimed tensors are listed one by one.
const MAX_UNCLAIMED_PATTERNS: usize = 20;

pub fn diagnostics(
    issues: &[Issue],
    unclaimed: &[String],
    spans: &ir::Spans,
    strict: bool,
    layers: Option<u64>,
) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let groups = group(issues);
    for g in groups {
        let (issue, missing_total) = (g.first, g.missing);
        let site = spans.get(&g.ir_path);
        // One occurrence reads best as its real name; several as a pattern. Positions
        // are named by their index variables where the mapping names them.
        let (pattern, where_) = match (&g.vars, g.members.len()) {
            (Some(vars), 1) => (
                subject(issue).to_string(),
                super::positions::for_vars(vars, &g.members),
            ),
            (Some(vars), _) => (g.pattern, super::positions::for_vars(vars, &g.members)),
            (None, 1) => (subject(issue).to_string(), String::new()),
            (None, _) => grouped(&g.pattern, &g.members),
        };
        let mut d = match &issue.kind {
            IssueKind::Missing { tensors, alternatives } => {
                let mut d = Diagnostic::new(Code::E0508, format!("missing tensor `{pattern}`{where_}"));
                if missing_total > 1 {
                    let shown = if g.vars.is_some() { "" } else { "; the first is shown" };
                    d = d.with_note(format!("{missing_total} tensors of this param are missing{shown}"));
                }
                if let Some(alt) = alternatives.first() {
                    let (alt, _, _) = positions(alt, &issue.templates);
                    d = d.with_note(format!("the fallback `{alt}` is missing too"));
                }
                // Suggest only tensors nothing else loads: a name another param already
                // uses cannot be the one this param is missing.
                let first = tensors.first().map_or("", String::as_str);
                d.suggest(first, unclaimed.iter().map(String::as_str))
            }
            IssueKind::Shape { tensor, expected, actual } => {
                let subject = match tensor {
                    Some(_) => format!("tensor `{pattern}`"),
                    None => format!("the source of `{}`", issue.target),
                };
                Diagnostic::new(
                    Code::E0509,
                    format!("{subject} is {} but the mapping expects {}{where_}", show(actual), show(expected)),
                )
                .with_labels(site.map(|s| s.shape_labels.clone()).unwrap_or_default())
            }
            IssueKind::Parts { what, shapes } => {
                let shown: Vec<String> = shapes.iter().take(4).map(|s| show(s)).collect();
                Diagnostic::new(Code::E0509, format!("`{}`: {what}{where_}", issue.target))
                    .with_note(format!("shapes in the checkpoint: {}", shown.join(", ")))
            }
            IssueKind::Dtype { dtype, target, .. } => Diagnostic::new(
                Code::E0507,
                format!("tensor `{pattern}` is {}, which cannot become {}{where_}", dtype.name(), target.name()),
            )
            .with_note("only F32, F16 and BF16 convert into each other implicitly; every other tensor loads only as its own dtype")
            .with_help(match dtype {
                Dtype::Other(_) => "the loader reads F32, F16, BF16, F8_E4M3, F8_E5M2, U8, I8, I32 and I64",
                _ if crate::load::is_training_float(*dtype) => "declare the param with an integer dtype only if the tensor holds integers",
                Dtype::F8E4M3 => "a fine-grained FP8 tensor loads through `fp8_blocks(...)` with its `weight_scale_inv`; the stdlib takes that form only where every scale it needs exists; or declare the param with the tensor's own dtype",
                _ => "a pre-quantized tensor loads only through a source form that names its scales; or declare the param with the tensor's own dtype",
            }),
            IssueKind::Tie { what, missing } => {
                let code = if *missing { Code::E0508 } else { Code::E0509 };
                Diagnostic::new(code, format!("`{}` {what}", issue.target))
            }
            IssueKind::Offload { message } => Diagnostic::new(
                Code::E0410,
                format!("the offload group of `{}` fails: {message}", issue.target),
            ),
            IssueKind::QuantDtype { dtype, want, .. } => Diagnostic::new(
                Code::E0530,
                format!("tensor `{pattern}` is {}, but its pre-quantized source stores {want}{where_}", dtype.name()),
            )
            .with_help("check that the checkpoint is the quantized release the mapping expects; a full-precision tensor is a plain source"),
            IssueKind::ScaleShape { weight, block, expected, actual, .. } => Diagnostic::new(
                Code::E0531,
                format!(
                    "scales `{pattern}` are {} but a {} tensor in {} blocks needs {}{where_}",
                    show(actual), show(weight), show(block), show(expected)
                ),
            )
            .with_help("set the block the checkpoint was quantized with (`quantization_config.weight_block_size`)"),
        };
        let missing = matches!(issue.kind, IssueKind::Missing { .. });
        match site {
            // A stdlib param missing its tensor under a user's prefix: the typo is most
            // likely in the user's line, so that is where the error points.
            Some(site) if missing && site.user_prefix.is_some() => {
                if let Some(prefix) = site.user_prefix {
                    d = d
                        .at(prefix, "the missing name starts with this prefix")
                        .with_label(site.span, "the param, declared here");
                }
            }
            Some(site) => d = d.at(site.span, "declared here"),
            None => {}
        }
        // Every param under one mistyped prefix of the user's: one error, with a count.
        let same_prefix = |o: &Diagnostic| {
            missing && o.code == Code::E0508 && o.primary == d.primary && o.primary.is_some()
        };
        let user_prefix = site.is_some_and(|s| s.user_prefix.is_some());
        match diags
            .items
            .iter_mut()
            .find(|o| user_prefix && same_prefix(o))
        {
            Some(first) => bump_count(first),
            None => diags.push(d),
        }
    }
    let mut by_pattern: BTreeMap<String, (Vec<Vec<u64>>, &str)> = BTreeMap::new();
    for name in unclaimed {
        let (p, nums) = templatize(name);
        by_pattern
            .entry(p)
            .or_insert((Vec::new(), name))
            .0
            .push(nums);
    }
    let code = if strict { Code::E0510 } else { Code::W0501 };
    let total = by_pattern.len();
    for (pattern, (members, first)) in by_pattern.into_iter().take(MAX_UNCLAIMED_PATTERNS) {
        let past = layers.and_then(|n| super::ranges::beyond_layers(&pattern, &members, n));
        let (pattern, count) = match members.len() {
            1 => (first.to_string(), String::new()),
            _ => grouped(&pattern, &members),
        };
        let mut d = Diagnostic::new(
            code,
            format!("checkpoint tensor `{pattern}`{count} is not loaded"),
        )
        .with_help(
            "map it to a param, or add `ignore \"<pattern>\"` if leaving it out is deliberate",
        );
        if let (Some(top), Some(n)) = (past, layers) {
            d = d.with_note(format!(
                "layer {top} ≥ num_hidden_layers = {n}: a layer the model does not have (a multi-token-prediction head?); `ignore \"model.layers.{{num_hidden_layers}}.*\"` says so"
            ));
        }
        if strict {
            d = d.with_note(
                "`load` refuses to drop tensors silently; `--allow-unclaimed` loads without them",
            );
        }
        diags.push(d);
    }
    if total > MAX_UNCLAIMED_PATTERNS {
        diags.push(Diagnostic::new(
            code,
            format!(
                "… and {} more patterns of unclaimed tensors",
                total - MAX_UNCLAIMED_PATTERNS
            ),
        ));
    }
    diags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templatize_replaces_index_segments() {
        let (p, n) = templatize("model.layers.12.mlp.experts.7.up_proj.weight");
        assert_eq!(p, "model.layers.{n}.mlp.experts.{n}.up_proj.weight");
        assert_eq!(n, vec![12, 7]);
    }

    #[test]
    fn grouped_compresses_ranges() {
        let members = vec![vec![0], vec![1], vec![2], vec![5]];
        let want = ("x.{0…2, 5}.w".to_string(), String::new());
        assert_eq!(grouped("x.{n}.w", &members), want);
    }
}
