//! A target whose bytes lie in the checkpoint as they are, one run after another: read
//! a piece at a time instead of assembled whole.
//!
//! Input: a target's recipe and dtype. Output: [`Runs`] when the recipe only reads
//! (reads, windows, reshapes, stacks and fuses along dim 0) and every read is stored in
//! the target dtype, so the target's bytes are the runs' bytes in order; `None` for
//! every other recipe (conversions, interleaving fuses, slices, transposes, stored
//! quantized formats), which are assembled as before. A quantizing sink reads such a
//! target in cache-sized pieces into a small reused buffer: the full-precision bytes
//! never land in a fresh tensor-sized buffer.

use crate::checkpoint::{Checkpoint, Dtype};
use crate::diag::{Code, Diagnostic};
use crate::plan::Recipe;

/// The byte runs of one target in the checkpoint, in the target's row-major order.
pub struct Runs<'a> {
    ckpt: &'a Checkpoint,
    /// `(file, offset, len)` of each run.
    runs: Vec<(usize, u64, u64)>,
    /// Where each run starts in the target's bytes (ascending; the first is 0).
    starts: Vec<u64>,
    len: u64,
    pub dtype: Dtype,
}

impl<'a> Runs<'a> {
    /// The runs of `recipe` when its bytes in `dtype` are exactly its reads' bytes.
    pub fn of(ckpt: &'a Checkpoint, recipe: &Recipe, dtype: Dtype) -> Option<Runs<'a>> {
        let mut runs = Vec::new();
        collect(recipe, dtype, &mut runs)?;
        let mut starts = Vec::with_capacity(runs.len());
        let mut len = 0u64;
        for &(_, _, n) in &runs {
            starts.push(len);
            len = len.checked_add(n)?;
        }
        Some(Runs {
            ckpt,
            runs,
            starts,
            len,
            dtype,
        })
    }

    /// The target's bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the target's bytes `at .. at + buf.len()` into `buf`, across runs where the
    /// range spans several.
    pub fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), Diagnostic> {
        let end = at.checked_add(buf.len() as u64).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(Diagnostic::new(
                Code::E0901,
                format!(
                    "a read of {} bytes at {at} past a target of {} bytes; this is a bug in wmapc",
                    buf.len(),
                    self.len
                ),
            ));
        }
        // The last run starting at or before `at`.
        let mut i = self.starts.partition_point(|&s| s <= at).saturating_sub(1);
        let (mut at, mut buf) = (at, buf);
        while !buf.is_empty() {
            let (file, offset, n) = self.runs[i];
            let within = at - self.starts[i];
            let take = usize::try_from(n - within).map_or(buf.len(), |left| left.min(buf.len()));
            let (head, rest) = std::mem::take(&mut buf).split_at_mut(take);
            self.ckpt.read_at(file, offset + within, head)?;
            at += take as u64;
            buf = rest;
            i += 1;
        }
        Ok(())
    }
}

/// Appends the runs of `recipe`; `None` when some part is not a plain read in `dtype`.
fn collect(recipe: &Recipe, dtype: Dtype, out: &mut Vec<(usize, u64, u64)>) -> Option<()> {
    match recipe {
        Recipe::Read { dtype: src, .. } | Recipe::Window { dtype: src, .. } if *src == dtype => {
            let runs = recipe.runs();
            // A window past 64 bits has no runs; it is assembled (and refused) as before.
            if runs.is_empty() && matches!(recipe, Recipe::Window { .. }) {
                return None;
            }
            out.extend(runs.into_iter().filter(|&(_, _, n)| n > 0));
            Some(())
        }
        Recipe::Reshape { source, .. } => collect(source, dtype, out),
        Recipe::Stack { parts } | Recipe::Fuse { dim: 0, parts } => {
            parts.iter().try_for_each(|p| collect(p, dtype, out))
        }
        _ => None,
    }
}
