//! Where a concrete name sits in the mapping, by index variable: matched against the name
//! templates of the param it concerns
//! (`model.layers.{layer}.mlp.experts.{expert}.up_proj.weight`),
//! `model.layers.3.mlp.experts.7.up_proj.weight` is layer = 3, expert = 7.
//!
//! Input: a checkpoint or target name and the templates of its param (every tensor name its
//! source reads, unexpanded, and its IR path). Output: the first template that matches,
//! extended by whatever the name adds after it (a companion such as `…weight_scale_inv`),
//! with each hole's variable and value in order; `None` when no template with a hole
//! matches (the report then numbers the positions instead). Holes hold whole numbers, as
//! the binder writes them.

use crate::ir;

/// A name located in one of its param's templates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The template, with the name's own tail after it (`{layer}` holes kept).
    pub template: String,
    /// The variables of the holes, in order, and their values in this name.
    pub vars: Vec<String>,
    pub values: Vec<u64>,
}

pub fn locate(name: &str, templates: &[String]) -> Option<Located> {
    templates.iter().find_map(|t| located_in(name, t))
}

fn located_in(name: &str, template: &str) -> Option<Located> {
    let (mut rest, mut t) = (name, template);
    let (mut vars, mut values) = (Vec::new(), Vec::new());
    while let Some(open) = t.find('{') {
        let close = open + t[open..].find('}')?;
        rest = rest.strip_prefix(&t[..open])?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        values.push(rest.get(..digits).filter(|d| !d.is_empty())?.parse().ok()?);
        vars.push(t[open + 1..close].to_string());
        rest = &rest[digits..];
        t = &t[close + 1..];
    }
    let tail = rest.strip_prefix(t)?;
    (!vars.is_empty()).then(|| Located {
        template: format!("{template}{tail}"),
        vars,
        values,
    })
}

/// Every tensor name a source may read, unexpanded (all fallback options), in order.
pub fn templates(s: &ir::Source, out: &mut Vec<String>) {
    use ir::Source as S;
    match s {
        S::Tensor { name, .. } | S::Bnb4 { name, .. } | S::Nvfp4 { name, .. } => {
            out.push(name.clone());
        }
        S::Fp8Blocks {
            name, scale_inv, ..
        } => out.extend([name.clone(), scale_inv.clone()]),
        S::Mxfp4 { blocks, scales, .. } => out.extend([blocks.clone(), scales.clone()]),
        S::Tied { .. } => {}
        S::Try { options: v } | S::Fuse { parts: v, .. } => {
            v.iter().for_each(|p| templates(p, out))
        }
        S::Stack { part: inner, .. }
        | S::Stacked { source: inner, .. }
        | S::Slice { source: inner, .. }
        | S::Split { source: inner, .. }
        | S::Reshape { source: inner, .. }
        | S::Squeeze { source: inner, .. }
        | S::Transpose { source: inner, .. } => templates(inner, out),
    }
}

/// `for layer = 0…47, expert = 3`: each variable's values across a group of names, a
/// run as `a…b`, anything else as a set; with the true count when the values of the
/// variables do not combine into every member.
pub fn for_vars(vars: &[String], members: &[Vec<u64>]) -> String {
    let shown: Vec<String> = vars
        .iter()
        .enumerate()
        .map(|(k, var)| {
            let set: std::collections::BTreeSet<u64> =
                members.iter().filter_map(|m| m.get(k).copied()).collect();
            let ns: Vec<u64> = set.iter().copied().collect();
            match ns.as_slice() {
                [one] => format!("{var} = {one}"),
                [first, .., last] if last - first + 1 == ns.len() as u64 => {
                    format!("{var} = {first}…{last}")
                }
                _ => {
                    let listed: Vec<String> = ns.iter().map(u64::to_string).collect();
                    format!("{var} ∈ {{{}}}", listed.join(", "))
                }
            }
        })
        .collect();
    let (_, over) = super::ranges::compact(&"{n}.".repeat(vars.len()), members);
    let count = over.map_or(String::new(), |n| format!(" ({n} tensors)"));
    format!(" for {}{count}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Vec<String> {
        vec![s.to_string()]
    }

    #[test]
    fn a_name_gets_each_variable_value() {
        let l = locate(
            "model.layers.3.mlp.experts.7.up_proj.weight",
            &t("model.layers.{layer}.mlp.experts.{expert}.up_proj.weight"),
        )
        .unwrap();
        assert_eq!(l.vars, ["layer", "expert"]);
        assert_eq!(l.values, [3, 7]);
    }

    #[test]
    fn a_companion_keeps_its_tail() {
        let l = locate(
            "model.layers.1.q_proj.weight_scale_inv",
            &t("model.layers.{layer}.q_proj.weight"),
        )
        .unwrap();
        assert_eq!(l.template, "model.layers.{layer}.q_proj.weight_scale_inv");
    }

    #[test]
    fn other_names_and_templates_without_holes_do_not_match() {
        assert_eq!(
            locate("model.layers.x.w", &t("model.layers.{layer}.w")),
            None
        );
        assert_eq!(locate("model.norm.weight", &t("model.norm.weight")), None);
        assert_eq!(locate("a.1.w", &t("b.{layer}.w")), None);
    }

    #[test]
    fn variables_are_named_with_their_values() {
        let vars = ["layer".to_string(), "expert".to_string()];
        let grid: Vec<Vec<u64>> = (0..3)
            .flat_map(|l| (0..4).map(move |e| vec![l, e]))
            .collect();
        assert_eq!(for_vars(&vars, &grid), " for layer = 0…2, expert = 0…3");
        let some = vec![vec![0, 1], vec![2, 5]];
        assert_eq!(
            for_vars(&vars, &some),
            " for layer ∈ {0, 2}, expert ∈ {1, 5} (2 tensors)"
        );
        assert_eq!(for_vars(&vars[..1], &[vec![3]]), " for layer = 3");
    }
}
