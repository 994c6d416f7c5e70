//! Names that differ only in their index segments, compacted into one pattern with a
//! range per position, the way transformers' load report groups them:
//! `model.layers.{0…47}.mlp.experts.{0…127}.up_proj.weight`.
//!
//! Input: a pattern from [`super::report::templatize`] (`{n}` per index segment) and the
//! numbers of each member name. Output: the pattern with each `{n}` replaced by that
//! position's numbers (`3`, `{0…47}`, `{0…2, 5}`), and the member count when the
//! members do not fill every combination of the positions.

use std::collections::BTreeSet;

/// The compact pattern, and the number of distinct members when they do not fill every
/// combination of the positions' values (then the ranges over-cover, and the count
/// says how many tensors there really are).
pub fn compact(pattern: &str, members: &[Vec<u64>]) -> (String, Option<usize>) {
    let holes = pattern.matches("{n}").count();
    let positions: Vec<BTreeSet<u64>> = (0..holes)
        .map(|k| members.iter().filter_map(|m| m.get(k).copied()).collect())
        .collect();
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    for set in &positions {
        let Some(at) = rest.find("{n}") else { break };
        out.push_str(&rest[..at]);
        out.push_str(&show_set(set));
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    let grid = positions
        .iter()
        .try_fold(1usize, |acc, s| acc.checked_mul(s.len()));
    let distinct = members.iter().collect::<BTreeSet<_>>().len();
    (out, (grid != Some(distinct)).then_some(distinct))
}

/// `3`, `{0…47}` or `{0…2, 5, 9…11}`.
fn show_set(set: &BTreeSet<u64>) -> String {
    let ns: Vec<u64> = set.iter().copied().collect();
    if let [one] = ns.as_slice() {
        return one.to_string();
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ns.len() {
        let mut j = i;
        while j + 1 < ns.len() && ns[j + 1] == ns[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            ns[i].to_string()
        } else {
            format!("{}…{}", ns[i], ns[j])
        });
        i = j + 1;
    }
    format!("{{{}}}", parts.join(", "))
}

/// The largest index at a position right after a `layers` segment, when it reaches
/// `num_hidden_layers`: such tensors belong to layers the model does not have
/// (multi-token-prediction heads, draft layers).
pub fn beyond_layers(pattern: &str, members: &[Vec<u64>], layers: u64) -> Option<u64> {
    let mut hole = 0;
    let mut prev = "";
    for seg in pattern.split('.') {
        if seg == "{n}" {
            if prev == "layers" {
                let top = members.iter().filter_map(|m| m.get(hole)).max().copied()?;
                return (top >= layers).then_some(top);
            }
            hole += 1;
        }
        prev = seg;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_grid_is_one_range_per_position() {
        let members: Vec<Vec<u64>> = (0..48)
            .flat_map(|l| (0..128).map(move |e| vec![l, e]))
            .collect();
        let p = "model.layers.{n}.mlp.experts.{n}.up_proj.weight";
        let want = "model.layers.{0…47}.mlp.experts.{0…127}.up_proj.weight";
        assert_eq!(compact(p, &members), (want.to_string(), None));
    }

    #[test]
    fn gaps_and_single_values_read_as_written() {
        let members = vec![vec![0, 3], vec![1, 3], vec![2, 3], vec![5, 3]];
        assert_eq!(
            compact("l.{n}.e.{n}.w", &members),
            ("l.{0…2, 5}.e.3.w".into(), None)
        );
    }

    #[test]
    fn a_partial_grid_gives_the_true_count() {
        let members = vec![vec![0, 0], vec![0, 1], vec![1, 0]];
        let want = ("l.{0…1}.e.{0…1}.w".to_string(), Some(3));
        assert_eq!(compact("l.{n}.e.{n}.w", &members), want);
    }

    #[test]
    fn indices_past_the_last_layer_are_found() {
        let members = vec![vec![3, 0], vec![3, 1]];
        assert_eq!(
            beyond_layers("model.layers.{n}.e.{n}.w", &members, 3),
            Some(3)
        );
        assert_eq!(beyond_layers("model.layers.{n}.e.{n}.w", &members, 4), None);
    }
}
