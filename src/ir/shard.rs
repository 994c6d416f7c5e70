//! Sharding rules: how a param splits across tensor-parallel (TP) and expert-parallel
//! (EP) ranks, and the index ranges one rank holds.
//!
//! Input: a param's [`Shard`] (from `shard column(…)`, `shard row(…)`, `shard experts`),
//! its shape and the [`Ranks`] of a load. Output: per split dim, the ranges of the full
//! param that the rank holds, in the order they are concatenated. Invariants: the ranges
//! of a dim lie inside it and never overlap; every rank's ranges have the same total
//! length, so shards of one param have one shape. A size that does not divide is a
//! [`SplitError`], which `check` and `plan` report as E0450 / E0451.

use serde::{Deserialize, Serialize};

/// How a param splits. A param without one is replicated on every rank.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Dim 0 stacks experts, split into contiguous blocks under EP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub experts: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp: Option<TpSplit>,
}

/// A split under TP: which dim, and the parts of that dim that split separately.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpSplit {
    pub kind: TpKind,
    /// The split dim: 0 for `column`, 1 for `row`, one more after an expert dim.
    pub dim: usize,
    /// The sizes of the fused parts along `dim` (one part when nothing is fused); each
    /// part splits on its own, so rank r of `[q; k; v]` holds `[q_r; k_r; v_r]`.
    pub parts: Vec<u64>,
    /// The indivisible run of a part (`head_dim`: whole heads); divides every part.
    pub unit: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TpKind {
    /// Output features split (dim 0 of a `[out, in]` weight); a part with fewer units
    /// than ranks is replicated when the ranks are a multiple of its units (GQA kv heads).
    Column,
    /// Input features split (dim 1); a partial sum per rank, so never replicated.
    Row,
}

impl TpKind {
    pub fn name(self) -> &'static str {
        match self {
            TpKind::Column => "column",
            TpKind::Row => "row",
        }
    }
}

/// One rank of a load: its TP and EP coordinates. Sizes are at least 1, ranks below them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranks {
    pub tp_rank: u64,
    pub tp_size: u64,
    pub ep_rank: u64,
    pub ep_size: u64,
}

impl Default for Ranks {
    fn default() -> Ranks {
        Ranks {
            tp_rank: 0,
            tp_size: 1,
            ep_rank: 0,
            ep_size: 1,
        }
    }
}

impl Ranks {
    /// Whether every param is whole (TP and EP size 1).
    pub fn is_whole(&self) -> bool {
        self.tp_size == 1 && self.ep_size == 1
    }
}

/// Why a param cannot split across the ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// A part's units (heads, rows) neither divide by the TP size nor, for a column
    /// part, divide it.
    Tp {
        dim: usize,
        part: usize,
        units: u64,
        unit: u64,
        size: u64,
        kind: TpKind,
    },
    /// The expert count does not divide by the EP size.
    Ep { experts: u64, size: u64 },
    /// The rule does not fit the shape (the IR was edited by hand).
    Shape(String),
}

/// The ranges a rank holds along one dim, `(dim, [start, end) ranges)`.
pub type DimRanges = (usize, Vec<[u64; 2]>);

impl Shard {
    /// Every split dim of a `shape` param and the ranges `ranks` holds there.
    pub fn ranges(&self, shape: &[u64], ranks: Ranks) -> Result<Vec<DimRanges>, SplitError> {
        let mut out = Vec::new();
        if self.experts {
            let experts = *shape
                .first()
                .ok_or_else(|| SplitError::Shape("`experts` on a scalar".into()))?;
            if experts % ranks.ep_size != 0 {
                return Err(SplitError::Ep {
                    experts,
                    size: ranks.ep_size,
                });
            }
            let per = experts / ranks.ep_size;
            out.push((0, vec![[ranks.ep_rank * per, (ranks.ep_rank + 1) * per]]));
        }
        if let Some(tp) = &self.tp {
            let len = shape.get(tp.dim).copied();
            if len != tp.parts.iter().try_fold(0u64, |a, &p| a.checked_add(p)) {
                return Err(SplitError::Shape(format!(
                    "the parts of dim {} do not add up to {len:?}",
                    tp.dim
                )));
            }
            out.push((tp.dim, tp.ranges(ranks.tp_rank, ranks.tp_size)?));
        }
        Ok(out)
    }
}

impl TpSplit {
    /// The ranges rank `rank` of `size` holds along the split dim, one per part.
    pub fn ranges(&self, rank: u64, size: u64) -> Result<Vec<[u64; 2]>, SplitError> {
        let mut out = Vec::with_capacity(self.parts.len());
        let mut at = 0u64;
        for (i, &part) in self.parts.iter().enumerate() {
            let bad = || SplitError::Tp {
                dim: self.dim,
                part: i,
                units: part / self.unit.max(1),
                unit: self.unit,
                size,
                kind: self.kind,
            };
            if self.unit == 0 || part % self.unit != 0 {
                return Err(SplitError::Shape(format!(
                    "unit {} does not divide part {part}",
                    self.unit
                )));
            }
            let units = part / self.unit;
            let (first, count) = if units % size == 0 {
                (rank * (units / size), units / size)
            } else if self.kind == TpKind::Column && size % units == 0 {
                // Fewer units than ranks: consecutive ranks share a unit, as vLLM
                // replicates kv heads (rank r holds head r / (size / units)).
                (rank / (size / units), 1)
            } else {
                return Err(bad());
            };
            let start = first
                .checked_mul(self.unit)
                .and_then(|s| s.checked_add(at))
                .ok_or_else(bad)?;
            let end = count
                .checked_mul(self.unit)
                .and_then(|n| n.checked_add(start))
                .ok_or_else(bad)?;
            out.push([start, end]);
            at = at.checked_add(part).ok_or_else(bad)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qkv(q: u64, kv: u64) -> TpSplit {
        TpSplit {
            kind: TpKind::Column,
            dim: 0,
            parts: vec![q * 2, kv * 2, kv * 2],
            unit: 2,
        }
    }

    #[test]
    fn fused_parts_split_one_by_one() {
        // 4 q heads, 2 kv heads of 2 rows, 2 ranks: rank 1 holds q heads 2..4, kv head 1.
        assert_eq!(qkv(4, 2).ranges(1, 2), Ok(vec![[4, 8], [10, 12], [14, 16]]));
    }

    #[test]
    fn fewer_kv_heads_than_ranks_are_replicated() {
        // 2 kv heads over 4 ranks: ranks 2 and 3 both hold kv head 1.
        let s = qkv(4, 2);
        assert_eq!(s.ranges(2, 4), Ok(vec![[4, 6], [10, 12], [14, 16]]));
        assert_eq!(s.ranges(3, 4), Ok(vec![[6, 8], [10, 12], [14, 16]]));
    }

    #[test]
    fn a_row_part_never_replicates() {
        let s = TpSplit {
            kind: TpKind::Row,
            ..qkv(2, 2)
        };
        assert!(matches!(
            s.ranges(0, 4),
            Err(SplitError::Tp { units: 2, .. })
        ));
    }

    #[test]
    fn experts_split_into_contiguous_blocks() {
        let s = Shard {
            experts: true,
            tp: None,
        };
        let ranks = Ranks {
            ep_rank: 1,
            ep_size: 2,
            ..Ranks::default()
        };
        assert_eq!(s.ranges(&[8, 4, 4], ranks), Ok(vec![(0, vec![[4, 8]])]));
        let three = Ranks {
            ep_size: 3,
            ..ranks
        };
        let err = s.ranges(&[8, 4, 4], three);
        assert_eq!(
            err,
            Err(SplitError::Ep {
                experts: 8,
                size: 3
            })
        );
    }
}
