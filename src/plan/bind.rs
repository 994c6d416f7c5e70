//! Binding: walk the IR with concrete indices and resolve every source against the
//! checkpoint's headers.

use std::collections::{BTreeMap, BTreeSet};

use super::report::{Issue, IssueKind};
use super::{groups, target_dtype, Fallback, Plan, Recipe, Target, PLAN_VERSION};
use crate::checkpoint::{Checkpoint, Dtype};
use crate::diag::Diagnostics;
use crate::ir;

mod prequant;

pub(crate) use prequant::scale_grid;

/// Binds `ir` to `ckpt`. The plan is `Some` exactly when there is no error; with
/// `strict`, unclaimed tensors are errors rather than warnings.
pub fn bind(
    ir: &ir::Ir,
    spans: &ir::Spans,
    ckpt: &Checkpoint,
    strict: bool,
) -> (Option<Plan>, Diagnostics) {
    let mut b = Binder {
        ckpt,
        claimed: BTreeSet::new(),
        ignore: BTreeSet::new(),
        targets: Vec::new(),
        issues: Vec::new(),
    };
    let mut env = Vec::new();
    b.body(&ir.root, &mut env, "");
    b.check_ties();
    let ignore: Vec<String> = b.ignore.iter().cloned().collect();
    let (mut ignored, mut unclaimed) = (Vec::new(), Vec::new());
    for name in ckpt.tensors.keys() {
        if b.claimed.contains(name.as_str()) {
            continue;
        }
        if ignore.iter().any(|p| glob(p, name)) {
            ignored.push(name.clone());
        } else {
            unclaimed.push(name.clone());
        }
    }
    let layers = ir
        .config
        .get("num_hidden_layers")
        .and_then(serde_json::Value::as_u64);
    let diags = super::report::diagnostics(&b.issues, &unclaimed, spans, strict, layers);
    let plan = (!diags.has_errors()).then(|| Plan {
        plan_version: PLAN_VERSION,
        model: ir.model.clone(),
        files: ckpt.shards.iter().map(|s| s.name.clone()).collect(),
        targets: b.targets,
        ignored,
        unclaimed,
        rank: None,
    });
    (plan, diags)
}

/// `*` matches any run of characters (dots included).
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name.ends_with(last) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Fills `{var}` holes from the environment.
pub(super) fn expand(template: &str, env: &[(String, i64)]) -> String {
    if !template.contains('{') {
        return template.to_string();
    }
    let mut out = template.to_string();
    for (var, value) in env.iter().rev() {
        out = out.replace(&format!("{{{var}}}"), &value.to_string());
    }
    out
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

struct Binder<'a> {
    ckpt: &'a Checkpoint,
    claimed: BTreeSet<String>,
    /// Ignore patterns with index holes widened to `*`.
    ignore: BTreeSet<String>,
    targets: Vec<Target>,
    issues: Vec<Issue>,
}

/// What binding one param collects on the way.
struct ParamCtx {
    target_dtype: Dtype,
    fallbacks: Vec<Fallback>,
    reads: Vec<String>,
}

type Bound = Result<Recipe, IssueKind>;

impl Binder<'_> {
    fn body(&mut self, body: &ir::Body, env: &mut Vec<(String, i64)>, path: &str) {
        for p in &body.params {
            self.param(p, env, &join(path, &p.name));
        }
        for inst in &body.instances {
            let ipath = join(path, &inst.name);
            match &inst.repeat {
                None => {
                    if let Some(v) = inst.variants.first() {
                        self.body(&v.body, env, &ipath);
                    }
                }
                Some(r) => {
                    let rpath = format!("{ipath}.{{{}}}", r.var);
                    // In index order: the variants' ranges sorted by start. A validated
                    // IR's ranges are disjoint and inside the repeat.
                    let mut ranges: Vec<(i64, i64, &ir::Variant)> = inst
                        .variants
                        .iter()
                        .flat_map(|v| v.indices.iter().map(move |[a, b]| (*a, *b, v)))
                        .collect();
                    ranges.sort_by_key(|(a, _, _)| *a);
                    for (a, b, v) in ranges {
                        for idx in a..b {
                            env.push((r.var.clone(), idx));
                            self.body(&v.body, env, &rpath);
                            env.pop();
                        }
                    }
                }
            }
        }
        for pattern in &body.ignore {
            self.ignore.insert(widen(pattern));
        }
    }

    fn param(&mut self, p: &ir::Param, env: &mut Vec<(String, i64)>, ir_path: &str) {
        let target = expand(ir_path, env);
        let target_dtype = target_dtype(p.dtype);
        let mut ctx = ParamCtx {
            target_dtype,
            fallbacks: Vec::new(),
            reads: Vec::new(),
        };
        let bound = self.source(&p.source, env, &mut ctx).and_then(|r| {
            let got = r.shape();
            if matches!(r, Recipe::Tied { .. }) || got == p.shape {
                Ok(r)
            } else {
                Err(IssueKind::Shape {
                    tensor: None,
                    expected: p.shape.clone(),
                    actual: got,
                })
            }
        });
        match bound {
            Ok(recipe) => {
                self.claimed.extend(ctx.reads);
                let offload = match &p.offload_group {
                    Some(g) => groups::offload(g, &p.source, env, &p.shape),
                    None => Ok(None),
                };
                let offload = match offload {
                    Ok(o) => o,
                    Err(message) => {
                        self.issues.push(Issue {
                            ir_path: ir_path.to_string(),
                            target,
                            kind: IssueKind::Offload { message },
                            templates: name_templates(p, ir_path),
                        });
                        return;
                    }
                };
                self.targets.push(Target {
                    name: target,
                    shape: p.shape.clone(),
                    dtype: target_dtype,
                    quantizable: p.quantizable,
                    offload,
                    fallbacks: ctx.fallbacks,
                    shard: p.shard.clone(),
                    recipe,
                });
            }
            // An optional param whose tensors are absent is simply not loaded.
            Err(IssueKind::Missing { .. }) if p.optional => {}
            Err(mut kind) => {
                // The tensors this param names are its, even though binding failed: do
                // not report them a second time as unclaimed.
                let mut named = Vec::new();
                self.all_named(&p.source, env, &mut named);
                // Reading stops at the first absent tensor; without fallbacks, report
                // every absent one (a stack misses all its experts, not one).
                if let IssueKind::Missing {
                    tensors,
                    alternatives,
                } = &mut kind
                {
                    if alternatives.is_empty() && tensors.len() == 1 {
                        let absent = named.iter().filter(|n| !self.ckpt.tensors.contains_key(*n));
                        let all: Vec<String> = absent.cloned().collect();
                        if all.first() == tensors.first() {
                            *tensors = all;
                        }
                    }
                }
                self.claimed.extend(
                    named
                        .into_iter()
                        .filter(|n| self.ckpt.tensors.contains_key(n)),
                );
                self.issues.push(Issue {
                    ir_path: ir_path.to_string(),
                    target,
                    kind,
                    templates: name_templates(p, ir_path),
                })
            }
        }
    }

    /// Every checkpoint tensor a source names, in all fallback options.
    fn all_named(&self, s: &ir::Source, env: &mut Vec<(String, i64)>, out: &mut Vec<String>) {
        match s {
            ir::Source::Try { options } => options.iter().for_each(|o| self.all_named(o, env, out)),
            _ => self.needed(s, env, out),
        }
    }

    /// The checkpoint tensors a source reads, expanded; `Tied` reads none.
    fn needed(&self, s: &ir::Source, env: &mut Vec<(String, i64)>, out: &mut Vec<String>) {
        use ir::Source as S;
        match s {
            S::Tensor { name, .. } => out.push(expand(name, env)),
            S::Fp8Blocks {
                name, scale_inv, ..
            } => out.extend([expand(name, env), expand(scale_inv, env)]),
            S::Nvfp4 { name, .. } => out.extend(prequant::nvfp4_names(&expand(name, env))),
            S::Mxfp4 { blocks, scales, .. } => {
                out.extend([expand(blocks, env), expand(scales, env)])
            }
            // The codes and their absmax decide whether this form is stored; the other
            // companions are checked when it binds.
            S::Bnb4 { name, .. } => {
                let name = expand(name, env);
                out.extend([format!("{name}.absmax"), name]);
            }
            // A fallback list needs only its first viable option; count the first.
            S::Try { options } => {
                if let Some(o) = options.first() {
                    self.needed(o, env, out);
                }
            }
            S::Fuse { parts, .. } => parts.iter().for_each(|p| self.needed(p, env, out)),
            S::Stack {
                var,
                start,
                count,
                part,
            } => {
                for i in *start..stack_end(*start, *count) {
                    env.push((var.clone(), i));
                    self.needed(part, env, out);
                    env.pop();
                }
            }
            S::Slice { source, .. }
            | S::Stacked { source, .. }
            | S::Split { source, .. }
            | S::Reshape { source, .. }
            | S::Squeeze { source, .. }
            | S::Transpose { source, .. } => self.needed(source, env, out),
            S::Tied { .. } => {}
        }
    }

    fn source(
        &mut self,
        s: &ir::Source,
        env: &mut Vec<(String, i64)>,
        ctx: &mut ParamCtx,
    ) -> Bound {
        use ir::Source as S;
        match s {
            S::Tensor { name, shape } => self.read(&expand(name, env), shape.as_deref(), ctx),
            S::Fp8Blocks {
                name,
                shape,
                scale_inv,
                block,
            } => {
                let names = [expand(name, env), expand(scale_inv, env)];
                self.fp8_blocks(&names, shape.as_deref(), *block, ctx)
            }
            S::Nvfp4 { name, shape } => self.nvfp4(&expand(name, env), shape, ctx),
            S::Mxfp4 {
                blocks,
                scales,
                shape,
            } => self.mxfp4([&expand(blocks, env), &expand(scales, env)], shape, ctx),
            S::Bnb4 {
                name,
                shape,
                blocksize,
            } => self.bnb4(&expand(name, env), shape.as_deref(), *blocksize, ctx),
            S::Try { options } => {
                let mut first_missing = None;
                let mut alternatives = Vec::new();
                for (i, o) in options.iter().enumerate() {
                    let mut need = Vec::new();
                    self.needed(o, env, &mut need);
                    let missing: Vec<String> = need
                        .iter()
                        .filter(|n| !self.ckpt.tensors.contains_key(*n))
                        .cloned()
                        .collect();
                    if missing.is_empty() {
                        ctx.fallbacks.extend(prequant::fallback(options, i));
                        return self.source(o, env, ctx);
                    }
                    // A pre-quantized form is how a param *may* be stored: what is
                    // missing from it matters only when every option is one.
                    if prequant::prequantized(o) && !prequant::all_prequantized(options) {
                        continue;
                    }
                    if first_missing.is_none() {
                        first_missing = Some(missing);
                    } else {
                        alternatives.extend(missing.into_iter().take(1));
                    }
                }
                Err(IssueKind::Missing {
                    tensors: first_missing.unwrap_or_default(),
                    alternatives,
                })
            }
            S::Fuse { dim, parts } => {
                let mut bound = Vec::with_capacity(parts.len());
                for p in parts {
                    bound.push(self.source(p, env, ctx)?);
                }
                let shapes: Vec<Vec<u64>> = bound.iter().map(Recipe::shape).collect();
                let first = &shapes[0];
                let agree = shapes.iter().all(|s| {
                    s.len() == first.len()
                        && *dim < s.len()
                        && s.iter()
                            .zip(first)
                            .enumerate()
                            .all(|(i, (a, b))| i == *dim || a == b)
                });
                if !agree {
                    return Err(IssueKind::Parts {
                        what: format!("fuse parts disagree off dim {dim}"),
                        shapes,
                    });
                }
                Ok(Recipe::Fuse {
                    dim: *dim,
                    parts: bound,
                })
            }
            S::Stack {
                var,
                start,
                count,
                part,
            } => {
                // The checker (or IR validation) capped the count; the vector still grows
                // as slices bind rather than trusting it.
                let mut bound = Vec::new();
                for i in *start..stack_end(*start, *count) {
                    env.push((var.clone(), i));
                    let r = self.source(part, env, ctx);
                    env.pop();
                    bound.push(r?);
                }
                let shapes: Vec<Vec<u64>> = bound.iter().map(Recipe::shape).collect();
                if shapes.windows(2).any(|w| w[0] != w[1]) {
                    return Err(IssueKind::Parts {
                        what: "stacked slices have different shapes".into(),
                        shapes,
                    });
                }
                Ok(Recipe::Stack { parts: bound })
            }
            // Read as it is: the slices are only named (the param's shape check holds
            // the leading dim to the count).
            S::Stacked { source, .. } => self.source(source, env, ctx),
            S::Slice {
                dim,
                start,
                end,
                step,
                source,
            } => {
                let inner = self.source(source, env, ctx)?;
                let shape = inner.shape();
                // `start <= end` and `step > 0` hold for a checked IR; one read from JSON
                // is held to them here too, so `Recipe::shape` cannot underflow.
                if *dim >= shape.len() || *end > shape[*dim] || start > end || *step == 0 {
                    return Err(IssueKind::Parts {
                        what: format!("slice {start}..{end} of dim {dim} does not fit"),
                        shapes: vec![shape],
                    });
                }
                Ok(Recipe::Slice {
                    dim: *dim,
                    start: *start,
                    end: *end,
                    step: *step,
                    source: Box::new(inner),
                })
            }
            S::Split {
                dim,
                part,
                of,
                source,
            } => {
                let inner = self.source(source, env, ctx)?;
                let shape = inner.shape();
                if *dim >= shape.len() || *of == 0 || part >= of || shape[*dim] % of != 0 {
                    return Err(IssueKind::Parts {
                        what: format!("dim {dim} does not split into {of} equal parts"),
                        shapes: vec![shape],
                    });
                }
                let len = shape[*dim] / of;
                Ok(Recipe::Slice {
                    dim: *dim,
                    start: part * len,
                    end: (part + 1) * len,
                    step: 1,
                    source: Box::new(inner),
                })
            }
            S::Reshape { shape, source } => {
                let inner = self.source(source, env, ctx)?;
                let have = inner.shape();
                if ir::numel(&have).is_none() || ir::numel(&have) != ir::numel(shape) {
                    return Err(IssueKind::Parts {
                        what: format!("cannot reshape to {shape:?}: element counts differ"),
                        shapes: vec![have],
                    });
                }
                Ok(Recipe::Reshape {
                    shape: shape.clone(),
                    source: Box::new(inner),
                })
            }
            S::Squeeze { dim, source } => {
                let inner = self.source(source, env, ctx)?;
                let mut shape = inner.shape();
                if *dim >= shape.len() || shape[*dim] != 1 {
                    return Err(IssueKind::Parts {
                        what: format!("cannot squeeze dim {dim}: it is not of size 1"),
                        shapes: vec![shape],
                    });
                }
                shape.remove(*dim);
                Ok(Recipe::Reshape {
                    shape,
                    source: Box::new(inner),
                })
            }
            S::Transpose { dims, source } => {
                let inner = self.source(source, env, ctx)?;
                let shape = inner.shape();
                if dims[0].max(dims[1]) >= shape.len() {
                    return Err(IssueKind::Parts {
                        what: format!("cannot transpose dims {} and {}", dims[0], dims[1]),
                        shapes: vec![shape],
                    });
                }
                Ok(Recipe::Transpose {
                    dims: *dims,
                    source: Box::new(inner),
                })
            }
            S::Tied { param } => Ok(Recipe::Tied {
                target: expand(param, env),
            }),
        }
    }

    fn read(&mut self, name: &str, expected: Option<&[u64]>, ctx: &mut ParamCtx) -> Bound {
        let entry = self.entry(name, expected)?;
        if !crate::load::convertible(entry.dtype, ctx.target_dtype) {
            return Err(IssueKind::Dtype {
                tensor: name.to_string(),
                dtype: entry.dtype,
                target: ctx.target_dtype,
            });
        }
        Ok(raw_read(name, entry, ctx))
    }

    /// The checkpoint entry of `name`, of the `expected` shape where one is known.
    fn entry(
        &self,
        name: &str,
        expected: Option<&[u64]>,
    ) -> Result<&crate::checkpoint::TensorEntry, IssueKind> {
        let Some(entry) = self.ckpt.tensors.get(name) else {
            return Err(IssueKind::Missing {
                tensors: vec![name.to_string()],
                alternatives: Vec::new(),
            });
        };
        if let Some(e) = expected {
            if e != entry.shape.as_slice() {
                return Err(IssueKind::Shape {
                    tensor: Some(name.to_string()),
                    expected: e.to_vec(),
                    actual: entry.shape.clone(),
                });
            }
        }
        Ok(entry)
    }

    /// Every `tied` target must be loaded, with the same shape.
    fn check_ties(&mut self) {
        let shapes: BTreeMap<&str, (&Vec<u64>, bool)> = self
            .targets
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    (&t.shape, matches!(t.recipe, Recipe::Tied { .. })),
                )
            })
            .collect();
        let mut issues = Vec::new();
        for t in &self.targets {
            if let Recipe::Tied { target } = &t.recipe {
                let problem = match shapes.get(target.as_str()) {
                    None => Some((format!("is tied to `{target}`, which is not loaded"), true)),
                    Some((_, true)) => Some((
                        format!("is tied to `{target}`, which is itself tied"),
                        false,
                    )),
                    Some((shape, _)) if **shape != t.shape => Some((
                        format!(
                            "is tied to `{target}` of shape {shape:?}, not {:?}",
                            t.shape
                        ),
                        false,
                    )),
                    _ => None,
                };
                if let Some((what, missing)) = problem {
                    issues.push(Issue {
                        ir_path: t.name.clone(),
                        target: t.name.clone(),
                        kind: IssueKind::Tie { what, missing },
                        templates: Vec::new(),
                    });
                }
            }
        }
        self.issues.extend(issues);
    }
}

/// A param's names with their index variables: its IR path, then every tensor name its
/// source may read.
fn name_templates(p: &ir::Param, ir_path: &str) -> Vec<String> {
    let mut out = vec![ir_path.to_string()];
    super::positions::templates(&p.source, &mut out);
    out
}

/// A read of `entry` as stored, claimed for this param.
fn raw_read(name: &str, entry: &crate::checkpoint::TensorEntry, ctx: &mut ParamCtx) -> Recipe {
    ctx.reads.push(name.to_string());
    Recipe::Read {
        file: entry.shard,
        tensor: name.to_string(),
        offset: entry.offset,
        length: entry.len,
        dtype: entry.dtype,
        shape: entry.shape.clone(),
    }
}

/// `model.layers.{layer}.x` → `model.layers.*.x`.
fn widen(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut in_hole = false;
    for c in pattern.chars() {
        match c {
            '{' => {
                in_hole = true;
                out.push('*');
            }
            '}' => in_hole = false,
            _ if !in_hole => out.push(c),
            _ => {}
        }
    }
    out
}

/// One past a stack's last index; an end that would overflow binds no slices (IR
/// validation refuses such a stack before binding).
fn stack_end(start: i64, count: u64) -> i64 {
    i64::try_from(count)
        .ok()
        .and_then(|c| start.checked_add(c))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_across_dots() {
        assert!(glob("mtp.*", "mtp.layers.0.weight"));
        assert!(glob(
            "model.layers.*.rotary_emb.inv_freq",
            "model.layers.12.rotary_emb.inv_freq"
        ));
        assert!(!glob(
            "model.layers.*.rotary_emb.inv_freq",
            "model.layers.12.mlp.weight"
        ));
        assert!(glob("exact", "exact"));
        assert!(!glob("a*b*c", "acb"));
    }

    #[test]
    fn stack_ends_never_wrap() {
        assert_eq!(stack_end(3, 2), 5);
        assert_eq!(
            stack_end(i64::MAX - 1, 5),
            i64::MAX - 1,
            "overflow binds nothing"
        );
        assert_eq!(stack_end(0, u64::MAX), 0);
    }

    #[test]
    fn widen_turns_holes_into_stars() {
        assert_eq!(widen("model.layers.{layer}.x.{e}"), "model.layers.*.x.*");
    }

    #[test]
    fn expand_fills_holes() {
        let env = vec![("layer".to_string(), 3), ("expert".to_string(), 7)];
        assert_eq!(expand("l.{layer}.e.{expert}", &env), "l.3.e.7");
    }
}
