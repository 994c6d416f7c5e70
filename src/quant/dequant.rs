//! Dequantization by element range: [`Dequantizer`] resolves a [`QuantizedTensor`]'s
//! scales once (double quant's nested absmax included) and then writes any run of
//! elements, so whole-tensor dequantization and the reconstruction-error report run in
//! parallel chunks without a second tensor-sized buffer.
//!
//! Every value is the format's own formula, element by element, so a chunked result is
//! bit-identical to a whole-tensor one; the error sums are merged in chunk order, so the
//! report is the same on every run and thread count.

use std::borrow::Cow;

use rayon::prelude::*;

use super::{bnb4, fp4, fp8, ErrorStats, Format, QuantizedTensor, Scales};

/// Elements per parallel chunk: small enough that a chunk's scratch stays under the
/// allocator's mmap threshold (no page faults per chunk), large enough to amortize.
const CHUNK: usize = 16 << 10;

/// A quantized tensor with its scales resolved for element access.
pub struct Dequantizer<'a> {
    q: &'a QuantizedTensor,
    /// bnb absmax per block: stored, or rebuilt from double quant's nested codes.
    absmax: Cow<'a, [f32]>,
    cols: usize,
}

impl<'a> Dequantizer<'a> {
    pub fn new(q: &'a QuantizedTensor) -> Dequantizer<'a> {
        let absmax = match (&q.scales, &q.nested) {
            (_, Some(n)) => Cow::Owned(bnb4::undo_double(n)),
            (Scales::F32(v), None) => Cow::Borrowed(v.as_slice()),
            (Scales::U8(_), None) => Cow::Borrowed(&[][..]),
        };
        let cols = q.shape.last().copied().unwrap_or(1).max(1) as usize;
        Dequantizer { q, absmax, cols }
    }

    /// Writes elements `start .. start + out.len()` (row-major, logical shape). A format
    /// paired with scales it cannot have (unreachable by construction) yields NaN. The
    /// format is matched once per run, so each loop below is a plain formula.
    pub fn range(&self, start: usize, out: &mut [f32]) {
        let (q, cols) = (self.q, self.cols);
        let f32s = match &q.scales {
            Scales::F32(v) => v.as_slice(),
            Scales::U8(_) => &[],
        };
        let bytes = match &q.scales {
            Scales::U8(v) => v.as_slice(),
            Scales::F32(_) => &[],
        };
        let scale = |v: &[f32], k: usize| v.get(k).copied().unwrap_or(f32::NAN);
        let each = |out: &mut [f32], f: &dyn Fn(usize) -> f32| {
            for (k, o) in out.iter_mut().enumerate() {
                *o = f(start + k);
            }
        };
        match q.format {
            Format::Nf4 { blocksize } | Format::Fp4 { blocksize } | Format::Nf4Dq { blocksize } => {
                let table = match q.format {
                    Format::Fp4 { .. } => bnb4::fp4_table(),
                    _ => bnb4::NF4,
                };
                bnb_range(&table, &q.data, &self.absmax, blocksize, start, out)
            }
            Format::Fp8PerTensor => {
                let s = scale(f32s, 0);
                each(out, &|i| fp8::e4m3_to_f32(q.data[i]) * s)
            }
            Format::Fp8PerChannel => each(out, &|i| {
                fp8::e4m3_to_f32(q.data[i]) * scale(f32s, i / cols)
            }),
            Format::Fp8Block { block } => each(out, &|i| {
                let (r, c) = (i / cols, i % cols);
                fp8::e4m3_to_f32(q.data[i])
                    * scale(f32s, (r / block) * cols.div_ceil(block) + c / block)
            }),
            Format::Nvfp4 => {
                let ws2 = q.tensor_scale.unwrap_or(1.0);
                each(out, &|i| fp4::nvfp4_value(&q.data, bytes, ws2, cols, i))
            }
            Format::Mxfp4 => each(out, &|i| fp4::mxfp4_value(&q.data, bytes, cols, i)),
        }
    }

    /// The whole tensor into `out` (`numel` values), in parallel chunks.
    pub fn all(&self, out: &mut [f32]) {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| self.range(c * CHUNK, chunk));
    }

    /// The whole tensor into `out` as bf16 (round to nearest even), in parallel chunks.
    pub fn all_bf16(&self, out: &mut [half::bf16]) {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut f = vec![0f32; chunk.len()];
                self.range(c * CHUNK, &mut f);
                for (o, v) in chunk.iter_mut().zip(f) {
                    *o = half::bf16::from_f32(v);
                }
            });
    }

    /// Reconstruction error against the values `x` that were quantized, chunk by chunk.
    pub fn error_against(&self, x: &[f32]) -> ErrorStats {
        let parts: Vec<ErrorStats> = x
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, xs)| {
                let mut back = vec![0f32; xs.len()];
                self.range(c * CHUNK, &mut back);
                ErrorStats::measure(xs, &back)
            })
            .collect();
        let mut total = ErrorStats::default();
        for p in &parts {
            total.merge(p);
        }
        total
    }
}

/// bnb 4-bit elements `start ..`: `table[code] × absmax[block]`, a block at a time.
fn bnb_range(
    table: &[f32; 16],
    packed: &[u8],
    absmax: &[f32],
    blocksize: usize,
    start: usize,
    out: &mut [f32],
) {
    let blocksize = blocksize.max(1);
    let (mut i, mut k) = (start, 0);
    while k < out.len() {
        let block = i / blocksize;
        let m = absmax.get(block).copied().unwrap_or(f32::NAN);
        let end = ((block + 1) * blocksize - i).min(out.len() - k);
        for o in &mut out[k..k + end] {
            let byte = packed[i / 2];
            let code = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
            *o = table[code as usize] * m;
            i += 1;
        }
        k += end;
    }
}
