//! Per-rank plans: a whole-model [`Plan`] + a rank's TP/EP coordinates → the plan of
//! that rank's shards, whose reads are exactly the bytes of its slices.
//!
//! Input: a bound plan (each target carries its [`Shard`] rule) and [`Ranks`]. Output: a
//! plan with the same targets in the same order, each cut to the rank's slice: its shape
//! is local, its offload groups are the rank's experts', and its recipe reads only the
//! rank's bytes. A slice is pushed down the recipe to the reads: a read cut along its
//! leading dim stays one contiguous [`Recipe::Read`]; cut along an inner dim it becomes a
//! [`Recipe::Window`] (one run a row). Fused parts are cut one by one (rank r of
//! `[q; k; v]` is `[q_r; k_r; v_r]`). FP8 block sources are cut to the tiles that cover
//! the slice. Where a slice cannot be pushed further (bnb 4-bit, MXFP4 and NVFP4 decoders,
//! a reshape that does not keep the split's rows together), the recipe below is read
//! whole and sliced in memory: correct, but more bytes, which the per-rank totals show. No rank talks to another: every rank computes its plan.
//! Sizes that do not divide are E0450 / E0451 ([`check_sizes`] reports them at `check`).

use std::collections::BTreeSet;

use super::{Offload, Plan, Recipe, Target};
use crate::diag::{Code, Diagnostic, Diagnostics};
use crate::ir::shard::{Ranks, SplitError, TpKind};
use crate::ir::{self, Body};

/// Every sharded param of `ir` checked against `ranks`: one E0450 / E0451 per param
/// whose heads, rows or experts do not divide.
pub fn check_sizes(ir: &ir::Ir, spans: &ir::Spans, ranks: Ranks) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let mut seen = BTreeSet::new();
    walk(&ir.root, "", &mut |path, p| {
        let Some(shard) = &p.shard else { return };
        if let Err(e) = shard.ranges(&p.shape, ranks) {
            if seen.insert(path.to_string()) {
                let mut d = split_error(path, &e);
                if let Some(site) = spans.get(path) {
                    d = d
                        .at(site.span, "this param")
                        .with_labels(site.shape_labels.clone());
                }
                diags.push(d);
            }
        }
    });
    diags
}

/// Calls `f` with each param and its IR path, every variant of every instance.
fn walk(body: &Body, path: &str, f: &mut dyn FnMut(&str, &ir::Param)) {
    let join = |n: &str| {
        if path.is_empty() {
            n.to_string()
        } else {
            format!("{path}.{n}")
        }
    };
    for p in &body.params {
        f(&join(&p.name), p);
    }
    for inst in &body.instances {
        let ipath = match &inst.repeat {
            Some(r) => format!("{}.{{{}}}", join(&inst.name), r.var),
            None => join(&inst.name),
        };
        for v in &inst.variants {
            walk(&v.body, &ipath, f);
        }
    }
}

/// The coded error for a param `name` that does not split.
pub fn split_error(name: &str, e: &SplitError) -> Diagnostic {
    match e {
        SplitError::Tp {
            dim,
            part,
            units,
            unit,
            size,
            kind,
        } => {
            let what = if *unit > 1 {
                format!("{units} units of {unit}")
            } else {
                format!("{units}")
            };
            let replicate = match kind {
                TpKind::Column => {
                    format!(", nor is {size} a multiple of them (which would replicate them)")
                }
                TpKind::Row => String::new(),
            };
            Diagnostic::new(
                Code::E0450,
                format!(
                    "`{name}` splits {} on dim {dim}: part {part} holds {what}, which do \
                     not divide by the TP size {size}{replicate}",
                    kind.name()
                ),
            )
            .with_help("choose a TP size that divides the model's heads and widths")
        }
        SplitError::Ep { experts, size } => Diagnostic::new(
            Code::E0451,
            format!(
                "`{name}` stacks {experts} experts on dim 0, which do not divide by \
                 the EP size {size}"
            ),
        )
        .with_help("choose an EP size that divides the expert count"),
        SplitError::Shape(m) => Diagnostic::new(
            Code::E0541,
            format!("`{name}` has a shard rule that does not fit it: {m}"),
        ),
    }
}

/// The plan of rank `ranks`: every target cut to the rank's slice (see the module doc).
pub fn for_rank(plan: &Plan, ranks: Ranks) -> Result<Plan, Diagnostic> {
    let mut targets = Vec::with_capacity(plan.targets.len());
    for t in &plan.targets {
        targets.push(cut_target(plan, t, ranks)?);
    }
    let rank = RankSummary::new(ranks, plan, &targets);
    Ok(Plan {
        targets,
        rank: Some(rank),
        ..plan.clone()
    })
}

/// One rank's coordinates and the bytes it reads, beside the whole load's.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RankSummary {
    pub tp_rank: u64,
    pub tp_size: u64,
    pub ep_rank: u64,
    pub ep_size: u64,
    /// Checkpoint bytes this rank reads.
    pub read_bytes: u64,
    /// Contiguous byte ranges those are read in.
    pub read_ranges: u64,
    /// Checkpoint bytes the whole (unsharded) load reads.
    pub whole_read_bytes: u64,
    /// Bytes of the rank's targets in their dtypes (tied ones once).
    pub target_bytes: u64,
    /// Targets cut to a slice; the rest are replicated.
    pub split_targets: usize,
    /// Per shard file (in [`Plan::files`] order): what this rank reads of it.
    pub files: Vec<FileReads>,
}

/// One shard file's share of a rank's reads.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileReads {
    pub file: usize,
    pub bytes: u64,
    pub ranges: u64,
}

impl RankSummary {
    fn new(ranks: Ranks, whole: &Plan, targets: &[Target]) -> RankSummary {
        let sum = |ts: &[Target]| {
            ts.iter()
                .fold(0u64, |a, t| a.saturating_add(t.recipe.read_bytes()))
        };
        let mut files: Vec<FileReads> = (0..whole.files.len())
            .map(|file| FileReads {
                file,
                bytes: 0,
                ranges: 0,
            })
            .collect();
        let runs = targets
            .iter()
            .flat_map(|t| t.recipe.reads())
            .flat_map(|r| r.runs());
        for (file, _, n) in runs {
            if let Some(f) = files.get_mut(file) {
                f.bytes = f.bytes.saturating_add(n);
                f.ranges += 1;
            }
        }
        let ranges = files.iter().map(|f| f.ranges).sum();
        RankSummary {
            tp_rank: ranks.tp_rank,
            tp_size: ranks.tp_size,
            ep_rank: ranks.ep_rank,
            ep_size: ranks.ep_size,
            read_bytes: sum(targets),
            read_ranges: ranges,
            whole_read_bytes: sum(&whole.targets),
            target_bytes: super::bytes_of_targets(targets),
            split_targets: targets.iter().filter(|t| t.shard.is_some()).count(),
            files,
        }
    }
}

/// The split dims of `t` and the ranges the rank holds there; empty when replicated.
fn target_ranges(t: &Target, ranks: Ranks) -> Result<Vec<ir::shard::DimRanges>, Diagnostic> {
    match &t.shard {
        None => Ok(Vec::new()),
        Some(s) => s
            .ranges(&t.shape, ranks)
            .map_err(|e| split_error(&t.name, &e)),
    }
}

fn cut_target(plan: &Plan, t: &Target, ranks: Ranks) -> Result<Target, Diagnostic> {
    let cuts = target_ranges(t, ranks)?;
    if let Recipe::Tied { target } = &t.recipe {
        // A tie shares its target's storage, so both must be cut alike.
        let other = plan.targets.iter().find(|o| &o.name == target);
        let same = other
            .map(|o| target_ranges(o, ranks).map(|c| c == cuts && o.shape == t.shape))
            .transpose()?;
        if same != Some(true) {
            return Err(Diagnostic::new(
                Code::E0541,
                format!(
                    "`{}` is tied to `{target}`, which splits another way",
                    t.name
                ),
            )
            .with_help("give both params the same `shard` rule"));
        }
    }
    let mut out = t.clone();
    for (dim, ranges) in &cuts {
        let len: u64 = ranges.iter().map(|[a, b]| b - a).sum();
        if let Some(d) = out.shape.get_mut(*dim) {
            *d = len;
        }
        if !matches!(out.recipe, Recipe::Tied { .. }) {
            out.recipe = narrow_ranges(&out.recipe, *dim, ranges);
        }
        if let (0, Some(Offload::PerSlice(groups))) = (*dim, &mut out.offload) {
            *groups = ranges
                .iter()
                .flat_map(|&[a, b]| groups.get(a as usize..b as usize).unwrap_or_default())
                .cloned()
                .collect();
        }
    }
    Ok(out)
}

/// `recipe` cut to `ranges` of `dim`, concatenated in order.
fn narrow_ranges(recipe: &Recipe, dim: usize, ranges: &[[u64; 2]]) -> Recipe {
    match ranges {
        [[a, b]] => narrow(recipe, dim, *a, *b),
        _ => Recipe::Fuse {
            dim,
            parts: ranges
                .iter()
                .map(|&[a, b]| narrow(recipe, dim, a, b))
                .collect(),
        },
    }
}

/// `recipe` cut to `start..end` of `dim`, pushed as far down as the recipe allows.
pub fn narrow(recipe: &Recipe, dim: usize, start: u64, end: u64) -> Recipe {
    if start == 0 && recipe.shape().get(dim) == Some(&end) {
        return recipe.clone();
    }
    match recipe {
        Recipe::Read { .. } | Recipe::Window { .. } => narrow_read(recipe, dim, start, end),
        Recipe::Fuse { dim: fd, parts } if *fd == dim => {
            // Only the parts the range meets, each cut to its share.
            let mut cut = Vec::new();
            let mut at = 0u64;
            for p in parts {
                let n = p.shape().get(dim).copied().unwrap_or(0);
                let next = at.saturating_add(n);
                let (a, b) = (start.max(at), end.min(next));
                if a < b {
                    cut.push(narrow(p, dim, a - at, b - at));
                }
                at = next;
            }
            one_or_fuse(dim, cut)
        }
        Recipe::Fuse { dim: fd, parts } => Recipe::Fuse {
            dim: *fd,
            parts: parts.iter().map(|p| narrow(p, dim, start, end)).collect(),
        },
        Recipe::Stack { parts } if dim == 0 => Recipe::Stack {
            parts: parts[start as usize..end as usize].to_vec(),
        },
        Recipe::Stack { parts } => Recipe::Stack {
            parts: parts
                .iter()
                .map(|p| narrow(p, dim - 1, start, end))
                .collect(),
        },
        Recipe::Slice { .. } => narrow_slice(recipe, dim, start, end),
        Recipe::Transpose { dims, source } => {
            let inner = match dim {
                d if d == dims[0] => dims[1],
                d if d == dims[1] => dims[0],
                d => d,
            };
            Recipe::Transpose {
                dims: *dims,
                source: Box::new(narrow(source, inner, start, end)),
            }
        }
        Recipe::Reshape { shape, source } => {
            match through_reshape(shape, &source.shape(), dim, start, end) {
                Some((k, a, b)) => {
                    let mut local = shape.clone();
                    local[dim] = end - start;
                    Recipe::Reshape {
                        shape: local,
                        source: Box::new(narrow(source, k, a, b)),
                    }
                }
                None => in_memory(recipe, dim, start, end),
            }
        }
        Recipe::Fp8Blocks { .. } => narrow_fp8(recipe, dim, start, end),
        Recipe::Bnb4 { .. } | Recipe::Mxfp4 { .. } | Recipe::Nvfp4 { .. } | Recipe::Tied { .. } => {
            in_memory(recipe, dim, start, end)
        }
    }
}

/// A read or window cut to a smaller window (a plain read when it stays contiguous).
fn narrow_read(recipe: &Recipe, dim: usize, start: u64, end: u64) -> Recipe {
    let (file, tensor, offset, dtype, stored, mut from, mut local) = match recipe {
        Recipe::Read {
            file,
            tensor,
            offset,
            dtype,
            shape,
            ..
        } => (
            file,
            tensor,
            offset,
            dtype,
            shape,
            vec![0; shape.len()],
            shape.clone(),
        ),
        Recipe::Window {
            file,
            tensor,
            offset,
            dtype,
            stored,
            start,
            shape,
        } => (
            file,
            tensor,
            offset,
            dtype,
            stored,
            start.clone(),
            shape.clone(),
        ),
        _ => return in_memory(recipe, dim, start, end),
    };
    let Some(moved) = from.get(dim).and_then(|f| f.checked_add(start)) else {
        return in_memory(recipe, dim, start, end);
    };
    from[dim] = moved;
    local[dim] = end - start;
    window(*file, tensor, *offset, *dtype, stored, from, local)
}

/// FP8 blocks cut to the tiles that cover `start..end` (codes and their scales alike),
/// then, when the range does not start and end on tile edges, sliced in memory: a rank
/// reads at most one partial tile more on each side.
fn narrow_fp8(recipe: &Recipe, dim: usize, start: u64, end: u64) -> Recipe {
    let Recipe::Fp8Blocks {
        block,
        weight,
        scale_inv,
    } = recipe
    else {
        return in_memory(recipe, dim, start, end);
    };
    let (Some(&b), Some(&len)) = (block.get(dim), weight.shape().get(dim)) else {
        return in_memory(recipe, dim, start, end);
    };
    let first = start / b * b;
    let last = end.div_ceil(b).saturating_mul(b).min(len);
    let tiles = Recipe::Fp8Blocks {
        block: *block,
        weight: Box::new(narrow(weight, dim, first, last)),
        scale_inv: Box::new(narrow(scale_inv, dim, first / b, last.div_ceil(b))),
    };
    if (first, last) == (start, end) {
        tiles
    } else {
        in_memory(&tiles, dim, start - first, end - first)
    }
}

/// A slice cut again: along its own dim, elements `start..end` of the slice sit at
/// `s0 + k·step` of the source, so the source is cut to that span; along another dim
/// the cut passes through.
fn narrow_slice(recipe: &Recipe, dim: usize, start: u64, end: u64) -> Recipe {
    let Recipe::Slice {
        dim: sd,
        start: s0,
        end: e0,
        step,
        source,
    } = recipe
    else {
        return in_memory(recipe, dim, start, end);
    };
    if *sd != dim {
        return Recipe::Slice {
            dim: *sd,
            start: *s0,
            end: *e0,
            step: *step,
            source: Box::new(narrow(source, dim, start, end)),
        };
    }
    // Inside a checked slice these stay below the source's dim; checked all the same.
    let at = |k: u64| k.checked_mul(*step).and_then(|o| o.checked_add(*s0));
    let (Some(first), Some(last)) = (at(start), end.checked_sub(1).and_then(at)) else {
        return in_memory(recipe, dim, start, end);
    };
    Recipe::Slice {
        dim,
        start: 0,
        end: last + 1 - first,
        step: *step,
        source: Box::new(narrow(source, dim, first, last + 1)),
    }
}

/// The whole of `recipe`, sliced after it is assembled.
fn in_memory(recipe: &Recipe, dim: usize, start: u64, end: u64) -> Recipe {
    Recipe::Slice {
        dim,
        start,
        end,
        step: 1,
        source: Box::new(recipe.clone()),
    }
}

fn one_or_fuse(dim: usize, mut parts: Vec<Recipe>) -> Recipe {
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        Recipe::Fuse { dim, parts }
    }
}

/// Where rows `start..end` of dim `dim` of a `[…]`-shaped reshape of `src` lie in `src`:
/// `(k, a, b)` when they are rows `a..b` of its dim `k`; `None` when they cross rows.
fn through_reshape(
    out: &[u64],
    src: &[u64],
    dim: usize,
    start: u64,
    end: u64,
) -> Option<(usize, u64, u64)> {
    let outer = ir::numel(&out[..dim])?;
    let inner = ir::numel(&out[dim + 1..])?;
    // The source dim at which the same number of outer rows ends.
    let mut k = 0;
    let mut seen = 1u64;
    while seen < outer {
        seen = seen.checked_mul(*src.get(k)?)?;
        k += 1;
    }
    if seen != outer {
        return None;
    }
    let below = ir::numel(src.get(k + 1..)?)?;
    let (a, b) = (start.checked_mul(inner)?, end.checked_mul(inner)?);
    (a % below == 0 && b % below == 0 && b / below <= *src.get(k)?)
        .then(|| (k, a / below, b / below))
}

/// A window, or a plain read when its bytes are one contiguous run.
fn window(
    file: usize,
    tensor: &str,
    offset: u64,
    dtype: crate::checkpoint::Dtype,
    stored: &[u64],
    start: Vec<u64>,
    shape: Vec<u64>,
) -> Recipe {
    let w = Recipe::Window {
        file,
        tensor: tensor.to_string(),
        offset,
        dtype,
        stored: stored.to_vec(),
        start,
        shape: shape.clone(),
    };
    match window_runs(&w).as_deref() {
        Some(&[(at, length)]) => Recipe::Read {
            file,
            tensor: tensor.to_string(),
            offset: at,
            length,
            dtype,
            shape,
        },
        _ => w,
    }
}

/// A window's contiguous runs `(offset, length)`, in order; `None` for another recipe
/// or when the arithmetic overflows.
pub fn window_runs(w: &Recipe) -> Option<Vec<(u64, u64)>> {
    let Recipe::Window {
        offset,
        dtype,
        stored,
        start,
        shape,
        ..
    } = w
    else {
        return None;
    };
    let es = dtype.size() as u64;
    // Dims after `q` are whole, so dims `q..` of the window are one run.
    let q = (0..shape.len())
        .rev()
        .find(|&d| shape[d] != stored[d])
        .unwrap_or(0);
    let run = ir::numel(&shape[q..])?.checked_mul(es)?;
    let mut strides = vec![es; stored.len()];
    for d in (0..stored.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1].checked_mul(stored[d + 1])?;
    }
    let base = start
        .iter()
        .zip(&strides)
        .try_fold(*offset, |a, (s, st)| a.checked_add(s.checked_mul(*st)?))?;
    let mut runs = Vec::with_capacity(usize::try_from(ir::numel(&shape[..q])?).ok()?);
    let mut idx = vec![0u64; q];
    loop {
        let at = idx
            .iter()
            .zip(&strides)
            .try_fold(base, |a, (i, st)| a.checked_add(i.checked_mul(*st)?))?;
        runs.push((at, run));
        // The next index over dims `..q`, last dim fastest.
        let mut d = q;
        loop {
            if d == 0 {
                return Some(runs);
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Dtype;

    fn read(shape: &[u64]) -> Recipe {
        Recipe::Read {
            file: 0,
            tensor: "w".into(),
            offset: 100,
            length: ir::numel(shape).unwrap() * 2,
            dtype: Dtype::Bf16,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn leading_rows_stay_one_read_and_columns_become_a_window() {
        // Rows 2..4 of a [4, 8] bf16 tensor: bytes 32..64 after the tensor's start.
        let rows = narrow(&read(&[4, 8]), 0, 2, 4);
        assert!(
            matches!(
                rows,
                Recipe::Read {
                    offset: 132,
                    length: 32,
                    ..
                }
            ),
            "{rows:?}"
        );
        // Columns 4..8: one 8-byte run per row, 16 bytes apart.
        let cols = narrow(&read(&[4, 8]), 1, 4, 8);
        let runs = window_runs(&cols).unwrap();
        assert_eq!(runs, vec![(108, 8), (124, 8), (140, 8), (156, 8)]);
    }

    #[test]
    fn a_reshape_passes_whole_heads_through_and_nothing_else() {
        // [heads · 3, 5] from [heads, 3, 5]: rows 3..6 are head 1; rows 1..2 cross rows.
        assert_eq!(
            through_reshape(&[12, 5], &[4, 3, 5], 0, 3, 6),
            Some((0, 1, 2))
        );
        assert_eq!(through_reshape(&[12, 5], &[4, 3, 5], 0, 1, 2), None);
    }
}
