//! Tracing a recipe: where each element of a target came from.
//!
//! Input: a [`Recipe`] tree. Output: a [`Trace`]: its reads (leaves, in order) and, for
//! every element of the assembled target (row-major), the id of the checkpoint element
//! it was copied from. Ids number the leaves' elements one after another, so leaf `k`
//! owns `base..base + numel`. Running the forward ops (fuse, stack, slice, reshape,
//! transpose) on ids instead of bytes gives every inverse at once: writing element `o`
//! of the target to id `ids[o]` splits a fuse, unstacks a stack, scatters a slice back
//! and undoes a transpose. Every size and offset is checked; a recipe that does not add
//! up (only a bug in `plan` can make one) is E0901.

use crate::checkpoint::Dtype;
use crate::diag::{Code, Diagnostic};
use crate::plan::Recipe;

/// One read of a recipe: a checkpoint tensor, whole.
#[derive(Clone, Debug, PartialEq)]
pub struct Leaf {
    pub tensor: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// The id of its first element.
    pub base: u64,
    pub numel: u64,
}

/// For each target element, the id of its source element.
#[derive(Clone, Debug, PartialEq)]
pub enum Ids {
    /// Element `o` came from id `o`: whole reads concatenated in order (reads, reshapes,
    /// stacks, fuses on dim 0), so no table is built.
    Identity(usize),
    Table(Vec<u64>),
}

impl Ids {
    pub fn len(&self) -> usize {
        match self {
            Ids::Identity(n) => *n,
            Ids::Table(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The length of the run of consecutive ids starting at element `o` (`o < len`),
    /// at most `limit`.
    pub fn run(&self, o: usize, limit: usize) -> usize {
        match self {
            Ids::Identity(n) => (n - o).min(limit),
            Ids::Table(t) => {
                let mut run = 1;
                while run < limit && o + run < t.len() && t[o + run] == t[o] + run as u64 {
                    run += 1;
                }
                run
            }
        }
    }

    pub fn get(&self, o: usize) -> u64 {
        match self {
            Ids::Identity(_) => o as u64,
            Ids::Table(t) => t[o],
        }
    }
}

/// A traced recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub leaves: Vec<Leaf>,
    pub shape: Vec<u64>,
    pub ids: Ids,
}

impl Trace {
    /// The leaf owning `id` and the element's index inside it.
    pub fn locate(&self, id: u64) -> Option<(&Leaf, u64)> {
        let k = self
            .leaves
            .partition_point(|l| l.base <= id)
            .checked_sub(1)?;
        let leaf = &self.leaves[k];
        let at = id - leaf.base;
        (at < leaf.numel).then_some((leaf, at))
    }
}

fn bug(what: String) -> Diagnostic {
    Diagnostic::new(
        Code::E0901,
        format!("{what}; the plan does not add up, this is a bug in wmapc"),
    )
}

/// The element count of `shape`, `None` past 64 bits.
pub fn numel(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

fn count(shape: &[u64]) -> Result<usize, Diagnostic> {
    numel(shape)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            bug(format!(
                "a shape {shape:?} beyond this machine's address space"
            ))
        })
}

/// Traces `recipe`; `Tied` has no elements of its own and is refused.
pub fn trace(recipe: &Recipe) -> Result<Trace, Diagnostic> {
    let mut leaves = Vec::new();
    if is_concatenation(recipe) {
        let shape = concatenation(recipe, &mut leaves)?;
        let n = leaves.last().map_or(0, |l| l.base + l.numel);
        let n = usize::try_from(n).map_err(|_| bug("a target past the address space".into()))?;
        return Ok(Trace {
            leaves,
            shape,
            ids: Ids::Identity(n),
        });
    }
    let (shape, ids) = walk(recipe, &mut leaves)?;
    Ok(Trace {
        leaves,
        shape,
        ids: Ids::Table(ids),
    })
}

/// Whole reads in order, nothing moved between them.
fn is_concatenation(r: &Recipe) -> bool {
    match r {
        Recipe::Read { .. } => true,
        Recipe::Reshape { source, .. } => is_concatenation(source),
        Recipe::Stack { parts } | Recipe::Fuse { dim: 0, parts } => {
            parts.iter().all(is_concatenation)
        }
        _ => false,
    }
}

/// The leaves and shape of a concatenation, without an id table.
fn concatenation(r: &Recipe, leaves: &mut Vec<Leaf>) -> Result<Vec<u64>, Diagnostic> {
    match r {
        Recipe::Read { shape, .. } => {
            leaf(r, leaves)?;
            Ok(shape.clone())
        }
        Recipe::Reshape { shape, source } => {
            let from = concatenation(source, leaves)?;
            if numel(shape) != numel(&from) {
                return Err(bug(format!("a reshape of {from:?} to {shape:?}")));
            }
            Ok(shape.clone())
        }
        Recipe::Stack { parts } | Recipe::Fuse { parts, .. } => {
            let shapes = parts
                .iter()
                .map(|p| concatenation(p, leaves))
                .collect::<Result<Vec<_>, _>>()?;
            // A stack adds a leading dim of one row per part; a fuse on dim 0 adds up
            // the parts' leading dims. Either way the rest of the shapes must agree.
            let stacked = matches!(r, Recipe::Stack { .. });
            let rest = |s: &[u64]| {
                if stacked {
                    s.to_vec()
                } else {
                    s.get(1..).unwrap_or_default().to_vec()
                }
            };
            let first = rest(shapes.first().map(Vec::as_slice).unwrap_or_default());
            let mut rows = 0u64;
            for s in &shapes {
                let own = if stacked { Some(1) } else { s.first().copied() };
                rows = match (rest(s) == first, own.and_then(|k| rows.checked_add(k))) {
                    (true, Some(n)) => n,
                    _ => {
                        return Err(bug(format!(
                            "parts of shapes {shapes:?} do not concatenate"
                        )))
                    }
                };
            }
            Ok([vec![rows], first].concat())
        }
        _ => Err(bug("a concatenation that moves elements".into())),
    }
}

/// Records a read as the next leaf; returns its ids' range.
fn leaf(r: &Recipe, leaves: &mut Vec<Leaf>) -> Result<std::ops::Range<u64>, Diagnostic> {
    let Recipe::Read {
        tensor,
        dtype,
        shape,
        ..
    } = r
    else {
        return Err(bug("a leaf that is not a read".into()));
    };
    let n = count(shape)? as u64;
    let base = leaves
        .last()
        .map_or(Some(0), |l| l.base.checked_add(l.numel));
    let base = base.ok_or_else(|| bug("element ids past 64 bits".into()))?;
    let end = base
        .checked_add(n)
        .ok_or_else(|| bug("element ids past 64 bits".into()))?;
    leaves.push(Leaf {
        tensor: tensor.clone(),
        dtype: *dtype,
        shape: shape.clone(),
        base,
        numel: n,
    });
    Ok(base..end)
}

type Traced = (Vec<u64>, Vec<u64>);

fn walk(r: &Recipe, leaves: &mut Vec<Leaf>) -> Result<Traced, Diagnostic> {
    match r {
        Recipe::Read { shape, .. } => Ok((shape.clone(), leaf(r, leaves)?.collect())),
        // A rank's slice: a save writes whole checkpoints, from whole plans only.
        Recipe::Window { .. } => Err(bug("a rank's window in a save".into())),
        Recipe::Reshape { shape, source } => {
            let (_, ids) = walk(source, leaves)?;
            if count(shape)? != ids.len() {
                return Err(bug(format!(
                    "a reshape to {shape:?} of {} elements",
                    ids.len()
                )));
            }
            Ok((shape.clone(), ids))
        }
        Recipe::Stack { parts } => {
            let traced = parts
                .iter()
                .map(|p| walk(p, leaves))
                .collect::<Result<Vec<_>, _>>()?;
            let inner = traced.first().map(|t| t.0.clone()).unwrap_or_default();
            if traced.iter().any(|t| t.0 != inner) {
                return Err(bug("a stack of parts of different shapes".into()));
            }
            let shape = [vec![parts.len() as u64], inner].concat();
            Ok((shape, traced.into_iter().flat_map(|t| t.1).collect()))
        }
        Recipe::Fuse { dim, parts } => {
            let traced = parts
                .iter()
                .map(|p| walk(p, leaves))
                .collect::<Result<Vec<_>, _>>()?;
            fuse(*dim, traced)
        }
        Recipe::Slice {
            dim,
            start,
            end,
            step,
            source,
        } => {
            let traced = walk(source, leaves)?;
            slice(*dim, (*start, *end, *step), traced)
        }
        Recipe::Transpose { dims, source } => {
            let traced = walk(source, leaves)?;
            transpose(*dims, traced)
        }
        Recipe::Tied { target } => Err(bug(format!("a tie to `{target}` inside a recipe"))),
        // The store holds dequantized values; the stored codes and scales cannot be
        // recovered from them exactly, so a pre-quantized source is not written back.
        Recipe::Fp8Blocks { .. } | Recipe::Bnb4 { .. } | Recipe::Mxfp4 { .. } | Recipe::Nvfp4 { .. } => {
            Err(Diagnostic::new(
                Code::E0520,
                "the mapping is not invertible: a param is read from a pre-quantized source, and its dequantized values do not give back the stored codes and scales",
            )
            .with_help("save from a load of the full-precision checkpoint, or export with `wmapc load --quant … --out`, which writes stored codes through"))
        }
    }
}

/// Concatenation along `dim`: each of the `outer` rows takes every part's row in turn.
fn fuse(dim: usize, parts: Vec<Traced>) -> Result<Traced, Diagnostic> {
    let first = parts.first().map(|p| p.0.clone()).unwrap_or_default();
    if dim >= first.len() {
        return Err(bug(format!(
            "a fuse on dim {dim} of a rank-{} tensor",
            first.len()
        )));
    }
    let mut shape = first.clone();
    shape[dim] = 0;
    for (s, _) in &parts {
        let same_rest = s.len() == first.len()
            && s.iter()
                .zip(&first)
                .enumerate()
                .all(|(i, (a, b))| i == dim || a == b);
        if !same_rest {
            return Err(bug(format!("a fuse on dim {dim} of {first:?} and {s:?}")));
        }
        shape[dim] = shape[dim]
            .checked_add(s[dim])
            .ok_or_else(|| bug("a fuse past 64 bits".into()))?;
    }
    let outer = count(&first[..dim])?;
    let mut ids = Vec::with_capacity(count(&shape)?);
    for o in 0..outer {
        for (s, part) in &parts {
            let row = count(&s[dim..])?;
            ids.extend_from_slice(&part[o * row..(o + 1) * row]);
        }
    }
    Ok((shape, ids))
}

/// `start..end` by `step` along `dim`.
fn slice(
    dim: usize,
    (start, end, step): (u64, u64, u64),
    src: Traced,
) -> Result<Traced, Diagnostic> {
    let (mut shape, ids) = src;
    let len = shape.get(dim).copied();
    if len.is_none_or(|len| step == 0 || start > end || end > len) {
        return Err(bug(format!(
            "a slice {start}..{end} by {step} on dim {dim} of {shape:?}"
        )));
    }
    let len = count(&shape[dim..=dim])?;
    let outer = count(&shape[..dim])?;
    let inner = count(&shape[dim + 1..])?;
    shape[dim] = (end - start).div_ceil(step);
    let mut out = Vec::with_capacity(count(&shape)?);
    for o in 0..outer {
        // Both bounds are at most `len`, which fits in usize.
        for k in (start as usize..end as usize).step_by(step as usize) {
            let from = (o * len + k) * inner;
            out.extend_from_slice(&ids[from..from + inner]);
        }
    }
    Ok((shape, out))
}

/// Swaps axes `dims` of a row-major tensor.
fn transpose(dims: [usize; 2], src: Traced) -> Result<Traced, Diagnostic> {
    let (shape, ids) = src;
    let rank = shape.len();
    if dims[0].max(dims[1]) >= rank {
        return Err(bug(format!("a transpose of dims {dims:?} of {shape:?}")));
    }
    let dims_usize: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims_usize[i + 1];
    }
    let mut out_shape = shape.clone();
    out_shape.swap(dims[0], dims[1]);
    strides.swap(dims[0], dims[1]);
    let mut idx = vec![0u64; rank];
    let mut out = Vec::with_capacity(ids.len());
    for _ in 0..ids.len() {
        let s: usize = idx
            .iter()
            .zip(&strides)
            .map(|(&i, st)| i as usize * st)
            .sum();
        out.push(ids[s]);
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            if idx[ax] < out_shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    Ok((out_shape, out))
}
