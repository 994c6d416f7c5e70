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

/// A traced recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub leaves: Vec<Leaf>,
    pub shape: Vec<u64>,
    /// For each target element, the id of its source element.
    pub ids: Vec<u64>,
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
    let (shape, ids) = walk(recipe, &mut leaves)?;
    Ok(Trace { leaves, shape, ids })
}

type Traced = (Vec<u64>, Vec<u64>);

fn walk(r: &Recipe, leaves: &mut Vec<Leaf>) -> Result<Traced, Diagnostic> {
    match r {
        Recipe::Read {
            tensor,
            dtype,
            shape,
            ..
        } => {
            let n = count(shape)? as u64;
            let base = leaves
                .last()
                .map_or(Some(0), |l| l.base.checked_add(l.numel));
            let base = base.ok_or_else(|| bug("element ids past 64 bits".into()))?;
            leaves.push(Leaf {
                tensor: tensor.clone(),
                dtype: *dtype,
                shape: shape.clone(),
                base,
                numel: n,
            });
            let end = base
                .checked_add(n)
                .ok_or_else(|| bug("element ids past 64 bits".into()))?;
            Ok((shape.clone(), (base..end).collect()))
        }
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
