//! Assembling one target from its recipe: reads, conversion, fuse, stack, slice,
//! transpose — byte moves on elements of the target dtype.

use super::convert::convert;
use crate::checkpoint::{Checkpoint, Dtype};
use crate::diag::{Code, Diagnostic};
use crate::plan::Recipe;

fn numel(shape: &[u64]) -> usize {
    shape.iter().product::<u64>() as usize
}

/// Fills `out` (exactly the recipe's bytes in `dtype`) from the checkpoint.
pub fn fill(
    ckpt: &Checkpoint,
    recipe: &Recipe,
    dtype: Dtype,
    out: &mut [u8],
) -> Result<(), Diagnostic> {
    let es = dtype.size();
    match recipe {
        Recipe::Read {
            file,
            offset,
            length,
            dtype: src,
            shape,
            ..
        } => {
            let entry = crate::checkpoint::TensorEntry {
                shard: *file,
                dtype: *src,
                shape: shape.clone(),
                offset: *offset,
                len: *length,
            };
            if *src == dtype {
                ckpt.read_into(&entry, out)
            } else {
                read_converted(ckpt, &entry, dtype, out)
            }
        }
        Recipe::Window {
            file, dtype: src, ..
        } => fill_window(ckpt, recipe, *file, *src, dtype, out),
        Recipe::Reshape { source, .. } => fill(ckpt, source, dtype, out),
        Recipe::Stack { parts } | Recipe::Fuse { dim: 0, parts } => {
            let mut at = 0;
            for p in parts {
                let n = numel(&p.shape()) * es;
                fill(ckpt, p, dtype, &mut out[at..at + n])?;
                at += n;
            }
            Ok(())
        }
        Recipe::Fuse { dim, parts } => {
            // Interleave: each of the `outer` rows takes every part's row in turn.
            let shape = recipe.shape();
            let outer = numel(&shape[..*dim]);
            let mut bufs = Vec::with_capacity(parts.len());
            for p in parts {
                bufs.push(materialize(ckpt, p, dtype)?);
            }
            let rows: Vec<usize> = bufs.iter().map(|b| b.len() / outer.max(1)).collect();
            let mut at = 0;
            for o in 0..outer {
                for (b, r) in bufs.iter().zip(&rows) {
                    out[at..at + r].copy_from_slice(&b[o * r..(o + 1) * r]);
                    at += r;
                }
            }
            Ok(())
        }
        Recipe::Slice {
            dim,
            start,
            end,
            step,
            source,
        } => {
            let src_shape = source.shape();
            let src = materialize(ckpt, source, dtype)?;
            let outer = numel(&src_shape[..*dim]);
            let row = numel(&src_shape[dim + 1..]) * es;
            let len = src_shape[*dim] as usize;
            let mut at = 0;
            for o in 0..outer {
                for k in (*start as usize..*end as usize).step_by(*step as usize) {
                    let from = (o * len + k) * row;
                    out[at..at + row].copy_from_slice(&src[from..from + row]);
                    at += row;
                }
            }
            Ok(())
        }
        Recipe::Transpose { dims, source } => {
            let src_shape: Vec<usize> = source.shape().iter().map(|&d| d as usize).collect();
            let src = materialize(ckpt, source, dtype)?;
            transpose(&src, &src_shape, *dims, es, out);
            Ok(())
        }
        Recipe::Fp8Blocks {
            block,
            weight,
            scale_inv,
        } => super::prequant::fill_fp8_blocks(ckpt, weight, scale_inv, *block, dtype, out),
        Recipe::Mxfp4 {
            shape,
            blocks,
            scales,
        } => super::prequant::fill_mxfp4(ckpt, shape, [blocks, scales], dtype, out),
        Recipe::Nvfp4 {
            shape,
            weight,
            scale,
            scale_2,
        } => super::prequant::fill_nvfp4(ckpt, shape, [weight, scale, scale_2], dtype, out),
        Recipe::Bnb4 { .. } => match super::prequant::bnb4_parts(recipe) {
            Some(parts) => super::prequant::fill_bnb4(ckpt, &parts, dtype, out),
            None => Ok(()),
        },
        // Tied targets are never filled: they share their target's storage.
        Recipe::Tied { .. } => Ok(()),
    }
}

/// Elements converted per read: a dtype conversion streams through a buffer of this
/// many source elements instead of holding the whole source tensor.
const CONVERT_CHUNK: usize = 1 << 20;

/// Reads `entry` chunk by chunk, converting each into its place in `out`.
fn read_converted(
    ckpt: &Checkpoint,
    entry: &crate::checkpoint::TensorEntry,
    dtype: Dtype,
    out: &mut [u8],
) -> Result<(), Diagnostic> {
    let (ss, ds) = (entry.dtype.size(), dtype.size());
    let mut raw = vec![0u8; CONVERT_CHUNK.min(out.len() / ds.max(1)) * ss];
    let mut offset = entry.offset;
    for dst in out.chunks_mut(CONVERT_CHUNK * ds) {
        let src = &mut raw[..dst.len() / ds * ss];
        ckpt.read_at(entry.shard, offset, src)?;
        convert(entry.dtype, src, dtype, dst);
        offset += src.len() as u64;
    }
    Ok(())
}

/// Reads a window run by run, each straight into its place in `out` (converted when
/// the stored dtype differs): only the window's own bytes are read.
fn fill_window(
    ckpt: &Checkpoint,
    window: &Recipe,
    file: usize,
    src: Dtype,
    dtype: Dtype,
    out: &mut [u8],
) -> Result<(), Diagnostic> {
    use rayon::prelude::*;
    let runs = crate::plan::shard::window_runs(window)
        .ok_or_else(|| Diagnostic::new(Code::E0901, "a window past 64 bits"))?;
    let (ss, ds) = (src.size(), dtype.size());
    // Each run with its own piece of `out`, in order.
    let mut jobs: Vec<(u64, usize, &mut [u8])> = Vec::with_capacity(runs.len());
    let mut rest: &mut [u8] = out;
    for (offset, len) in runs {
        let len = usize::try_from(len)
            .map_err(|_| Diagnostic::new(Code::E0901, "a window run past the address space"))?;
        let n = len / ss * ds;
        if rest.len() < n {
            return Err(Diagnostic::new(
                Code::E0901,
                "a window larger than its target",
            ));
        }
        let (dst, tail) = std::mem::take(&mut rest).split_at_mut(n);
        jobs.push((offset, len, dst));
        rest = tail;
    }
    // A column window is one short read per row: thousands of positioned reads, spread
    // over the pool a batch at a time (one at a time, a rank read at a seventh of the
    // whole load's rate).
    jobs.par_chunks_mut(64).try_for_each(|batch| {
        let mut raw = Vec::new();
        for (offset, len, dst) in batch.iter_mut() {
            if src == dtype {
                ckpt.read_at(file, *offset, dst)?;
            } else {
                raw.resize(*len, 0);
                ckpt.read_at(file, *offset, &mut raw)?;
                convert(src, &raw, dtype, dst);
            }
        }
        Ok(())
    })
}

fn materialize(ckpt: &Checkpoint, recipe: &Recipe, dtype: Dtype) -> Result<Vec<u8>, Diagnostic> {
    let mut buf = super::memory::try_alloc(numel(&recipe.shape()) * dtype.size(), "a source")?;
    fill(ckpt, recipe, dtype, &mut buf)?;
    Ok(buf)
}

/// Swaps two axes of a row-major tensor of `es`-byte elements.
fn transpose(src: &[u8], shape: &[usize], dims: [usize; 2], es: usize, out: &mut [u8]) {
    let rank = shape.len();
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let mut out_shape = shape.to_vec();
    out_shape.swap(dims[0], dims[1]);
    let mut src_strides = strides.clone();
    src_strides.swap(dims[0], dims[1]);
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; rank];
    for o in 0..n {
        let s: usize = idx.iter().zip(&src_strides).map(|(i, st)| i * st).sum();
        out[o * es..(o + 1) * es].copy_from_slice(&src[s * es..(s + 1) * es]);
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            if idx[ax] < out_shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::transpose;

    #[test]
    fn transpose_swaps_axes() {
        // [[0, 1, 2], [3, 4, 5]] → [[0, 3], [1, 4], [2, 5]]
        let src: Vec<u8> = (0..6).collect();
        let mut out = vec![0u8; 6];
        transpose(&src, &[2, 3], [0, 1], 1, &mut out);
        assert_eq!(out, vec![0, 3, 1, 4, 2, 5]);
    }
}
