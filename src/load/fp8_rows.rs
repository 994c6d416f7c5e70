//! FP8 pass-through through a row gather: a target built from one fine-grained FP8 matrix
//! by `reshape`s and `slice`s that only regroup and select its rows (DeepSeek's `kv_b`,
//! split per head into `k_b` and `v_b`) keeps the stored codes and scales when each of its
//! tiles is a whole stored tile.
//!
//! Input: a target's recipe and the square tile of the requested `fp8-block` format.
//! Output: the FP8 matrix's rows the target takes, in order, with the `Fp8Blocks` node they
//! come from, when the recipe is such a gather, the node's block is that tile and the rows
//! fall into whole tiles; `None` otherwise (the load then dequantizes and requantizes).
//! Columns are never cut: a reshape must keep the matrix's column count as its last dim
//! and a slice must not touch that dim, so every scale column comes along.

use crate::plan::Recipe;

/// The rows of a whole-tile row gather over one `Fp8Blocks` with tile `[b, b]`.
pub fn whole_tile_rows(r: &Recipe, b: u64) -> Option<(Vec<u64>, &Recipe)> {
    let (rows, node) = gathered_rows(r)?;
    let Recipe::Fp8Blocks { block, .. } = node else {
        return None;
    };
    let b_rows = usize::try_from(b).ok().filter(|&n| n > 0)?;
    let whole = *block == [b, b]
        && rows.len() % b_rows == 0
        && rows
            .chunks(b_rows)
            .all(|tile| tile[0] % b == 0 && tile.iter().zip(tile[0]..).all(|(&r, want)| r == want));
    whole.then_some((rows, node))
}

/// The FP8 matrix rows a recipe of row regroupings and selections takes, in order.
fn gathered_rows(r: &Recipe) -> Option<(Vec<u64>, &Recipe)> {
    match r {
        Recipe::Fp8Blocks { weight, .. } => match weight.shape().as_slice() {
            [rows, _] => Some(((0..*rows).collect(), r)),
            _ => None,
        },
        Recipe::Reshape { shape, source } => {
            let (rows, node) = gathered_rows(source)?;
            let cols = cols(node)?;
            (shape.last() == Some(&cols)).then_some((rows, node))
        }
        Recipe::Slice {
            dim,
            start,
            end,
            step,
            source,
        } => {
            let (rows, node) = gathered_rows(source)?;
            let shape = source.shape();
            // The row dims are all but the last; slicing the last would cut columns.
            let row_dims = shape.split_last()?.1;
            let len = usize::try_from(*row_dims.get(*dim)?).ok()?;
            let outer = usize::try_from(crate::ir::numel(&row_dims[..*dim])?).ok()?;
            let inner = usize::try_from(crate::ir::numel(&row_dims[dim + 1..])?).ok()?;
            let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
            let step = usize::try_from(*step).ok().filter(|&s| s > 0)?;
            let mut out = Vec::new();
            for o in 0..outer {
                for k in (start..end.min(len)).step_by(step) {
                    let at = (o * len + k) * inner;
                    out.extend_from_slice(rows.get(at..at + inner)?);
                }
            }
            Some((out, node))
        }
        _ => None,
    }
}

fn cols(node: &Recipe) -> Option<u64> {
    match node {
        Recipe::Fp8Blocks { weight, .. } => weight.shape().get(1).copied(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Dtype;

    fn read(shape: Vec<u64>) -> Box<Recipe> {
        Box::new(Recipe::Read {
            file: 0,
            offset: 0,
            length: 0,
            dtype: Dtype::F8E4M3,
            shape,
            tensor: "w".into(),
        })
    }

    /// `kv_b` of 2 heads × (nope 4 + v 4) rows, split like the stdlib's `k_b`.
    fn k_b(block: u64) -> Recipe {
        let fp8 = Recipe::Fp8Blocks {
            block: [block, block],
            weight: read(vec![16, 8]),
            scale_inv: read(vec![16 / block, 8 / block]),
        };
        let heads = Recipe::Reshape {
            shape: vec![2, 8, 8],
            source: Box::new(fp8),
        };
        let k = Recipe::Slice {
            dim: 1,
            start: 0,
            end: 4,
            step: 1,
            source: Box::new(heads),
        };
        Recipe::Reshape {
            shape: vec![8, 8],
            source: Box::new(k),
        }
    }

    #[test]
    fn a_per_head_split_on_tile_boundaries_keeps_whole_tiles() {
        let (rows, _) = whole_tile_rows(&k_b(4), 4).unwrap();
        assert_eq!(rows, [0, 1, 2, 3, 8, 9, 10, 11]);
    }

    #[test]
    fn a_split_inside_a_tile_does_not() {
        assert!(whole_tile_rows(&k_b(8), 8).is_none());
        assert!(
            whole_tile_rows(&k_b(4), 8).is_none(),
            "another tile than stored"
        );
    }
}
