//! Scattering runtime tensors back into checkpoint tensors.
//!
//! Input: traced targets ([`super::trace`]) with their runtime bytes, one at a time.
//! Output: checkpoint tensors in their own dtype, each handed out as soon as every one
//! of its elements has been written ([`Assembler::add`]), so only tensors still being
//! assembled are held. Invariants: an element narrowed back to its checkpoint dtype
//! widens to exactly the runtime value (else E0523); an element written twice (two
//! slices of one source overlapping) gets the same bytes both times (else E0524); a
//! tensor some elements of which no target holds is E0520 at [`Assembler::finish`],
//! naming the rows along dim 0 that are missing.

use std::collections::BTreeMap;

use super::trace::{Leaf, Trace};
use crate::checkpoint::Dtype;
use crate::diag::{Code, Diagnostic};
use crate::load::{convert, convertible};

/// A checkpoint tensor being put back together.
struct Assembly {
    dtype: Dtype,
    shape: Vec<u64>,
    bytes: Vec<u8>,
    covered: Vec<bool>,
    left: usize,
}

/// A finished checkpoint tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

/// Checkpoint tensors under assembly, by name.
#[derive(Default)]
pub struct Assembler {
    open: BTreeMap<String, Assembly>,
    /// Targets still to come that read each tensor: a tensor is handed out when the last
    /// one has been added, so overlapping reads are all compared.
    readers: BTreeMap<String, usize>,
}

fn bug(what: String) -> Diagnostic {
    Diagnostic::new(Code::E0901, format!("{what}; this is a bug in wmapc"))
}

impl Assembler {
    /// Announces a target that will be [`Assembler::add`]ed, by the tensors its recipe
    /// reads (`Recipe::reads`; a name read twice counts once).
    pub fn expect<'a>(&mut self, tensors: impl IntoIterator<Item = &'a str>) {
        let unique: std::collections::BTreeSet<&str> = tensors.into_iter().collect();
        for t in unique {
            *self.readers.entry(t.to_string()).or_default() += 1;
        }
    }

    /// Scatters one target (`data`: its bytes in `dtype`, row-major) into the checkpoint
    /// tensors it was read from; returns those it completed.
    pub fn add(
        &mut self,
        target: &str,
        trace: &Trace,
        dtype: Dtype,
        data: &[u8],
    ) -> Result<Vec<Tensor>, Diagnostic> {
        let es = dtype.size();
        if Some(data.len()) != trace.ids.len().checked_mul(es) {
            return Err(bug(format!(
                "`{target}` has {} bytes for {} elements",
                data.len(),
                trace.ids.len()
            )));
        }
        let mut o = 0;
        while o < trace.ids.len() {
            let id = trace.ids.get(o);
            let (leaf, at) = trace
                .locate(id)
                .ok_or_else(|| bug(format!("element id {id} of `{target}` has no read")))?;
            // A run of consecutive ids inside one leaf moves as one block.
            let run = trace.ids.run(o, (leaf.numel - at) as usize);
            let src = &data[o * es..(o + run) * es];
            self.place(target, leaf, at as usize, dtype, src)?;
            o += run;
        }
        let mut out = Vec::new();
        for name in distinct(trace) {
            let left = self.readers.get_mut(&name).map(|n| {
                *n = n.saturating_sub(1);
                *n
            });
            if left.unwrap_or(0) > 0 {
                continue;
            }
            // Incomplete tensors stay for `finish` to report.
            if self.open.get(&name).is_some_and(|a| a.left == 0) {
                if let Some(a) = self.open.remove(&name) {
                    out.push(Tensor {
                        name,
                        dtype: a.dtype,
                        shape: a.shape,
                        bytes: a.bytes,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Writes `src` (runtime elements in `dtype`) at element `at` of `leaf`'s tensor.
    fn place(
        &mut self,
        target: &str,
        leaf: &Leaf,
        at: usize,
        dtype: Dtype,
        src: &[u8],
    ) -> Result<(), Diagnostic> {
        let a = self.open_assembly(leaf)?;
        let ls = leaf.dtype.size();
        let n = src.len() / dtype.size().max(1);
        let narrowed = narrow(target, leaf, at, dtype, src)?;
        let covered = &mut a.covered[at..at + n];
        if !covered.iter().any(|&c| c) {
            a.bytes[at * ls..(at + n) * ls].copy_from_slice(&narrowed);
            covered.fill(true);
            a.left -= n;
            return Ok(());
        }
        // Overlapping reads: every element already written must agree.
        for k in 0..n {
            let (i, to) = (at + k, &narrowed[k * ls..(k + 1) * ls]);
            let slot = &mut a.bytes[i * ls..(i + 1) * ls];
            if a.covered[i] {
                if slot != to {
                    return Err(conflict(target, &leaf.tensor, i));
                }
            } else {
                slot.copy_from_slice(to);
                a.covered[i] = true;
                a.left -= 1;
            }
        }
        Ok(())
    }

    fn open_assembly(&mut self, leaf: &Leaf) -> Result<&mut Assembly, Diagnostic> {
        if !self.open.contains_key(&leaf.tensor) {
            let n = usize::try_from(leaf.numel)
                .map_err(|_| bug(format!("`{}` is too large to assemble", leaf.tensor)))?;
            let bytes = n
                .checked_mul(leaf.dtype.size())
                .ok_or_else(|| bug(format!("`{}` is too large to assemble", leaf.tensor)))?;
            let mut buf = Vec::new();
            buf.try_reserve_exact(bytes).map_err(|e| {
                Diagnostic::new(
                    Code::E0515,
                    format!(
                        "`{}` needs a {bytes}-byte buffer, which cannot be allocated: {e}",
                        leaf.tensor
                    ),
                )
            })?;
            buf.resize(bytes, 0);
            self.open.insert(
                leaf.tensor.clone(),
                Assembly {
                    dtype: leaf.dtype,
                    shape: leaf.shape.clone(),
                    bytes: buf,
                    covered: vec![false; n],
                    left: n,
                },
            );
        }
        self.open
            .get_mut(&leaf.tensor)
            .ok_or_else(|| bug(format!("`{}` vanished", leaf.tensor)))
    }

    /// Every tensor complete, or E0520 for the first that is not (by name).
    pub fn finish(self) -> Result<(), Diagnostic> {
        let Some((name, a)) = self.open.into_iter().next() else {
            return Ok(());
        };
        Err(not_invertible(&name, &a.shape, &a.covered))
    }
}

/// `src` in the leaf's dtype; E0523 when a value does not survive the narrowing.
fn narrow(
    target: &str,
    leaf: &Leaf,
    at: usize,
    dtype: Dtype,
    src: &[u8],
) -> Result<Vec<u8>, Diagnostic> {
    if leaf.dtype == dtype {
        return Ok(src.to_vec());
    }
    if !convertible(dtype, leaf.dtype) {
        return Err(bug(format!(
            "`{target}` is {} but reads {} `{}`",
            dtype.name(),
            leaf.dtype.name(),
            leaf.tensor
        )));
    }
    let (es, ls) = (dtype.size(), leaf.dtype.size());
    let n = src.len() / es;
    let mut out = vec![0u8; n * ls];
    convert(dtype, src, leaf.dtype, &mut out);
    let mut back = vec![0u8; src.len()];
    convert(leaf.dtype, &out, dtype, &mut back);
    if back == src {
        return Ok(out);
    }
    for k in 0..n {
        let (want, got) = (&src[k * es..(k + 1) * es], &back[k * es..(k + 1) * es]);
        let (w, g) = (as_f32(dtype, want), as_f32(dtype, got));
        if want != got && !(w.is_nan() && g.is_nan()) {
            return Err(Diagnostic::new(
                Code::E0523,
                format!(
                    "`{target}` holds {w:e} for element {} of `{}`, which is {} in the checkpoint and cannot hold it exactly (it would become {g:e})",
                    at + k,
                    leaf.tensor,
                    leaf.dtype.name(),
                ),
            )
            .with_help(format!(
                "round the param to {} before saving: the load widened it, and training moved it past what the checkpoint's dtype holds",
                leaf.dtype.name()
            )));
        }
    }
    Ok(out)
}

fn as_f32(dtype: Dtype, b: &[u8]) -> f32 {
    match (dtype, b) {
        (Dtype::F32, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]),
        (Dtype::F16, &[a, b]) => half::f16::from_le_bytes([a, b]).to_f32(),
        (Dtype::Bf16, &[a, b]) => half::bf16::from_le_bytes([a, b]).to_f32(),
        _ => f32::NAN,
    }
}

fn conflict(target: &str, tensor: &str, element: usize) -> Diagnostic {
    Diagnostic::new(
        Code::E0524,
        format!("`{target}` gives element {element} of `{tensor}` a value another param already gave it differently"),
    )
    .with_note("two params of the runtime store are read from the same checkpoint elements, and they no longer agree")
    .with_help("make the params that share checkpoint elements equal again (or tie them) before saving")
}

/// E0520: the rows along dim 0 of which some element was not written, as ranges.
fn not_invertible(name: &str, shape: &[u64], covered: &[bool]) -> Diagnostic {
    let rows = shape.first().copied().unwrap_or(1).max(1) as usize;
    let per_row = covered.len() / rows;
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for r in 0..rows {
        let missing = covered[r * per_row..(r + 1) * per_row].iter().any(|c| !c);
        match ranges.last_mut() {
            Some((_, end)) if missing && *end == r => *end = r + 1,
            _ if missing => ranges.push((r, r + 1)),
            _ => {}
        }
    }
    let shown: Vec<String> = ranges
        .iter()
        .map(|(a, b)| {
            if b - a == 1 {
                a.to_string()
            } else {
                format!("{a}..{b}")
            }
        })
        .collect();
    Diagnostic::new(
        Code::E0520,
        format!(
            "the mapping is not invertible: rows {} (dim 0, of {rows}) of `{name}` are read by no param, so the runtime store does not hold them",
            shown.join(", ")
        ),
    )
    .with_help("map every row of the tensor (a param for the rows left out), or `ignore` the tensor so that it is copied from --like")
}

/// The tensors a trace reads, each once, in order.
fn distinct(trace: &Trace) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    trace
        .leaves
        .iter()
        .filter(|l| seen.insert(l.tensor.as_str()))
        .map(|l| l.tensor.clone())
        .collect()
}
