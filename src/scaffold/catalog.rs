//! The stdlib as a catalogue of name sets: every `module`/`block` → the relative tensor
//! names its params read, one list of alternatives per param.
//!
//! Input: the embedded stdlib, less the files of hidden models. Output: [`Catalog`],
//! which answers "which declarations claim exactly these tensors". Shapes and `when`
//! conditions are not evaluated here: the scaffolder verifies its choices by compiling.

use std::collections::BTreeMap;

use crate::syntax::ast::{self, DeclKind, SourceKind};

/// How deep instance nesting is followed; the stdlib nests three levels at most.
const MAX_DEPTH: usize = 8;

/// One param's ways to be satisfied: each alternative is a list of name templates
/// (`{var}` holes match indices); an empty alternative (`tied(…)`) claims nothing.
#[derive(Clone, Debug)]
pub struct Slot {
    pub optional: bool,
    pub alternatives: Vec<Vec<String>>,
    /// A `when` that is a bare config symbol (`attention_bias`): the scaffold can set it.
    pub flag: Option<String>,
}

/// A stdlib declaration with its slots, flattened through its instances.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub kind: DeclKind,
    pub file: &'static str,
    pub slots: Vec<Slot>,
}

#[derive(Default)]
pub struct Catalog {
    pub entries: Vec<Entry>,
    /// `ignore` patterns the stdlib declares (non-weight buffers).
    pub ignores: Vec<String>,
    /// Top-level source names of models → the param name the stdlib gives them.
    pub param_names: BTreeMap<String, String>,
    /// (name, tied target's source name) pairs from `[name, tied(x)]` fallbacks.
    pub ties: Vec<(String, String)>,
    /// How often each config name appears in stdlib shapes and ranges, to rank bindings.
    pub key_rank: BTreeMap<String, usize>,
}

impl Catalog {
    /// Builds the catalogue from every stdlib file except the files declaring `hidden`.
    pub fn new(hidden: &[String]) -> Catalog {
        let mut decls: BTreeMap<String, (&'static str, ast::Decl)> = BTreeMap::new();
        let mut sources = crate::source::SourceMap::new();
        for (path, text) in crate::stdlib::FILES {
            let id = sources.add(*path, *text);
            // The stdlib is tested to parse; a file that does not is skipped.
            let Ok(file) = crate::syntax::parse(id, text) else {
                continue;
            };
            let hides = file.decls.iter().any(|d| {
                d.kind == DeclKind::Model
                    && hidden.iter().any(|h| h.eq_ignore_ascii_case(&d.name.node))
            });
            if !hides {
                for d in file.decls {
                    decls.insert(d.name.node.clone(), (*path, d));
                }
            }
        }
        let mut cat = Catalog::default();
        for (name, (file, decl)) in &decls {
            cat.learn(decl);
            if decl.kind != DeclKind::Model {
                let slots = slots_of(&decls, decl, "", false, 0, &string_params(decl, &[]));
                cat.entries.push(Entry {
                    name: name.clone(),
                    kind: decl.kind,
                    file,
                    slots,
                });
            }
        }
        cat.ignores.sort();
        cat.ignores.dedup();
        cat.ties.sort();
        cat.ties.dedup();
        cat
    }

    /// Records ignores, model param names, tied fallbacks and config-name frequencies.
    fn learn(&mut self, decl: &ast::Decl) {
        for m in &decl.members {
            match m {
                ast::Member::Ignore(names) => {
                    self.ignores.extend(names.iter().map(|n| n.node.clone()));
                }
                ast::Member::Param(p) => {
                    for e in &p.shape.node {
                        self.rank(e);
                    }
                    if decl.kind == DeclKind::Model {
                        self.learn_model_param(decl, p);
                    }
                }
                ast::Member::Instance(i) => {
                    if let Some(r) = &i.repeat {
                        self.rank(&r.range.end);
                    }
                }
                ast::Member::Config(_) | ast::Member::Match(_) => {}
            }
        }
    }

    fn learn_model_param(&mut self, decl: &ast::Decl, p: &ast::Param) {
        let Some(src) = &p.source else { return };
        let mut names = Vec::new();
        let mut tied = None;
        let alts = match &src.node {
            SourceKind::Try(alts) => alts.iter().collect(),
            _ => vec![src],
        };
        for a in alts {
            match &a.node {
                SourceKind::Name { template, .. } => names.push(template.node.clone()),
                SourceKind::Tied(path) => tied = path.node.first().cloned(),
                _ => {}
            }
        }
        for n in &names {
            self.param_names
                .entry(n.clone())
                .or_insert_with(|| p.name.node.clone());
        }
        let target = tied.and_then(|t| model_param_source(decl, &t));
        if let (Some(first), Some(target)) = (names.first(), target) {
            self.ties.push((first.clone(), target));
        }
    }

    fn rank(&mut self, e: &ast::Expr) {
        crate::check::collect_names(e, &mut |n| {
            *self.key_rank.entry(n.to_string()).or_default() += 1;
        });
    }
}

/// The single source name of a model's param `name`, when it has one.
fn model_param_source(decl: &ast::Decl, name: &str) -> Option<String> {
    decl.members.iter().find_map(|m| match m {
        ast::Member::Param(p) if p.name.node == name => match &p.source.as_ref()?.node {
            SourceKind::Name { template, .. } => Some(template.node.clone()),
            _ => None,
        },
        _ => None,
    })
}

/// A declaration's string parameters (`module GatedExperts(gate = "gate_proj")`) with the
/// values an instance gives (`GatedExperts(gate = "w1")`) over the defaults: what their
/// `{gate}` holes in tensor names read.
fn string_params(decl: &ast::Decl, args: &[ast::Arg]) -> Vec<(String, String)> {
    let literal = |e: &ast::Expr| match &e.node {
        ast::ExprKind::Str(s) => Some(s.clone()),
        _ => None,
    };
    decl.params
        .iter()
        .filter_map(|p| {
            let given = args.iter().find(|a| a.name.node == p.name.node);
            let value = match given {
                Some(a) => literal(&a.value)?,
                None => literal(p.default.as_ref()?)?,
            };
            Some((p.name.node.clone(), value))
        })
        .collect()
}

/// `name` with each `{param}` hole of a string parameter filled.
fn fill(name: &str, params: &[(String, String)]) -> String {
    params.iter().fold(name.to_string(), |n, (k, v)| {
        n.replace(&format!("{{{k}}}"), v)
    })
}

/// The slots of `decl` with every template under `prefix`.
fn slots_of(
    decls: &BTreeMap<String, (&'static str, ast::Decl)>,
    decl: &ast::Decl,
    prefix: &str,
    optional: bool,
    depth: usize,
    params: &[(String, String)],
) -> Vec<Slot> {
    let mut out = Vec::new();
    if depth > MAX_DEPTH {
        return out;
    }
    for m in &decl.members {
        match m {
            ast::Member::Param(p) => {
                let Some(src) = &p.source else { continue };
                let flag = match p.when.as_ref().map(|w| &w.node) {
                    Some(ast::ExprKind::Name(path)) if path.len() == 1 => Some(path[0].clone()),
                    _ => None,
                };
                let alternatives = alternatives(src)
                    .into_iter()
                    .map(|alt| alt.iter().map(|n| join(prefix, &fill(n, params))).collect())
                    .collect();
                out.push(Slot {
                    optional: optional || p.when.is_some() || p.optional.is_some(),
                    alternatives,
                    flag,
                });
            }
            ast::Member::Instance(i) => {
                let Some((_, sub)) = decls.get(&i.decl.node) else {
                    continue;
                };
                let at = i.at.as_ref().map_or("", |a| a.node.as_str());
                out.extend(slots_of(
                    decls,
                    sub,
                    &join(prefix, at),
                    optional || i.when.is_some(),
                    depth + 1,
                    &string_params(sub, &i.args),
                ));
            }
            _ => {}
        }
    }
    out
}

/// The name lists a source may read, one per fallback alternative.
fn alternatives(src: &ast::Source) -> Vec<Vec<String>> {
    match &src.node {
        SourceKind::Name { template, .. } => vec![vec![template.node.clone()]],
        SourceKind::Tied(_) => vec![vec![]],
        SourceKind::Try(alts) => alts.iter().flat_map(alternatives).collect(),
        SourceKind::Fuse { parts, .. } => {
            // Every combination of the parts' alternatives.
            let mut acc: Vec<Vec<String>> = vec![vec![]];
            for part in parts {
                let options = alternatives(part);
                acc = acc
                    .iter()
                    .flat_map(|a| {
                        options.iter().map(move |o| {
                            let mut v = a.clone();
                            v.extend(o.iter().cloned());
                            v
                        })
                    })
                    .collect();
            }
            acc
        }
        SourceKind::Stack { part, .. } => alternatives(part),
        SourceKind::Stacked { source, .. } => alternatives(source),
        // Pre-quantized forms read their codes and scales together.
        SourceKind::Fp8Blocks {
            template,
            scale_inv,
            ..
        } => {
            let scale = scale_inv.as_ref().map_or_else(
                || format!("{}_scale_inv", template.node),
                |s| s.node.clone(),
            );
            vec![vec![template.node.clone(), scale]]
        }
        SourceKind::Mxfp4 { blocks, scales } => {
            vec![vec![blocks.node.clone(), scales.node.clone()]]
        }
        SourceKind::Nvfp4(template) | SourceKind::Bnb4 { template, .. } => {
            vec![vec![template.node.clone()]]
        }
        SourceKind::Slice { source, .. }
        | SourceKind::Split { source, .. }
        | SourceKind::Reshape { source, .. }
        | SourceKind::Squeeze { source, .. }
        | SourceKind::Transpose { source, .. } => alternatives(source),
    }
}

pub fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}.{name}"),
    }
}

/// Whether `name` fits `template`, each `{var}` hole matching a decimal index.
pub fn fits(template: &str, name: &str) -> bool {
    let Some(open) = template.find('{') else {
        return template == name;
    };
    let Some(close) = template[open..].find('}').map(|c| open + c) else {
        return template == name;
    };
    let (head, tail) = (&template[..open], &template[close + 1..]);
    let Some(rest) = name.strip_prefix(head) else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && fits(tail, &rest[digits..])
}

/// Config flags a claim decided: the flag and whether its params matched.
pub type Flags = Vec<(String, bool)>;

/// The names an entry claims and the flags that decided it.
pub type Claim = (Vec<String>, Flags);

/// What an entry claims of `names` (relative to one prefix): the matched names and the
/// flags whose params matched (`true`) or not (`false`); `None` when a required slot
/// finds no alternative or nothing is claimed.
pub fn claim(entry: &Entry, names: &[String]) -> Option<Claim> {
    let mut claimed = Vec::new();
    let mut flags = Vec::new();
    for slot in &entry.slots {
        let hit = slot.alternatives.iter().find_map(|alt| {
            let matched: Vec<Vec<&String>> = alt
                .iter()
                .map(|t| names.iter().filter(|n| fits(t, n)).collect())
                .collect();
            matched.iter().all(|m| !m.is_empty()).then_some(matched)
        });
        match hit {
            Some(m) => claimed.extend(m.into_iter().flatten().cloned()),
            None if slot.optional => {}
            None => return None,
        }
        if let Some(f) = &slot.flag {
            flags.push((f.clone(), hit_nonempty(slot, names)));
        }
    }
    claimed.sort();
    claimed.dedup();
    (!claimed.is_empty()).then_some((claimed, flags))
}

fn hit_nonempty(slot: &Slot, names: &[String]) -> bool {
    slot.alternatives
        .iter()
        .any(|alt| !alt.is_empty() && alt.iter().all(|t| names.iter().any(|n| fits(t, n))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_match_indices_only() {
        assert!(fits("experts.{e}.w1.weight", "experts.12.w1.weight"));
        assert!(!fits("experts.{e}.w1.weight", "experts.x.w1.weight"));
        assert!(!fits("experts.{e}.w1.weight", "experts.1.w1.weight.absmax"));
        assert!(fits("gate.weight", "gate.weight"));
    }

    #[test]
    fn a_module_claims_the_first_alternative_that_is_all_present() {
        let catalog = Catalog::new(&[]);
        let attention = catalog
            .entries
            .iter()
            .find(|e| e.name == "Attention")
            .unwrap();
        let names: Vec<String> = ["qkv_proj.weight", "o_proj.weight", "q_norm.weight"]
            .map(String::from)
            .into();
        let (claimed, _) = claim(attention, &names).unwrap();
        assert_eq!(claimed, ["o_proj.weight", "qkv_proj.weight"]);
        // Without an output projection a required param is missing: no claim.
        assert!(claim(attention, &names[..1]).is_none());
    }
}
