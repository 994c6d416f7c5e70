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

/// The error report measures one chunk in this many (the first always): re-widening and
/// dequantizing every element doubled the cost of quantizing on the CPU, and a one-in-8
/// sample of 16 Ki-element runs spread over the tensor estimates the mean to well
/// under a percent on any tensor large enough to be sampled at all.
pub const ERROR_SAMPLE: usize = 8;

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
            Format::Fp8Block { block } => fp8_block_range(&q.data, f32s, cols, block, start, out),
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
            // One scratch per worker: a fresh one per chunk is freed back to the OS and
            // faulted in again (glibc trims the heap top), which cost more than the work.
            .for_each_init(
                || vec![0f32; CHUNK],
                |f, (c, chunk)| {
                    let f = &mut f[..chunk.len()];
                    self.range(c * CHUNK, f);
                    for (o, v) in chunk.iter_mut().zip(f.iter()) {
                        *o = half::bf16::from_f32(*v);
                    }
                },
            );
    }

    /// Reconstruction error against the values `x` that were quantized, chunk by chunk.
    pub fn error_against(&self, x: &[f32]) -> ErrorStats {
        self.error_with(x.len(), |start, out| {
            out.copy_from_slice(&x[start..start + out.len()])
        })
    }

    /// Reconstruction error against `n` source values that `fill(start, chunk)` writes
    /// (widened from the checkpoint's bytes, say), over one chunk in [`ERROR_SAMPLE`]
    /// (`count` says how many elements were measured).
    pub fn error_with(&self, n: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> ErrorStats {
        let parts: Vec<ErrorStats> = (0..n.div_ceil(CHUNK))
            .into_par_iter()
            .filter(|c| c % ERROR_SAMPLE == 0)
            .map_init(
                || (vec![0f32; CHUNK], vec![0f32; CHUNK]),
                |(xs, back), c| {
                    let start = c * CHUNK;
                    let len = CHUNK.min(n - start);
                    let (xs, back) = (&mut xs[..len], &mut back[..len]);
                    fill(start, xs);
                    self.range(start, back);
                    ErrorStats::measure(xs, back)
                },
            )
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
        let run = &mut out[k..k + end];
        if i % 2 == 0 {
            // From a byte boundary: both nibbles of a byte at a time, no parity test per
            // element (this loop is most of the sampled error report).
            let bytes = &packed[i / 2..(i + end).div_ceil(2)];
            let mut pairs = run.chunks_exact_mut(2);
            for (pair, &byte) in (&mut pairs).zip(bytes) {
                pair[0] = table[usize::from(byte >> 4)] * m;
                pair[1] = table[usize::from(byte & 0x0F)] * m;
            }
            if let ([o], Some(&byte)) = (pairs.into_remainder(), bytes.last()) {
                *o = table[usize::from(byte >> 4)] * m;
            }
        } else {
            for (j, o) in run.iter_mut().enumerate() {
                let byte = packed[(i + j) / 2];
                let code = if (i + j) % 2 == 0 {
                    byte >> 4
                } else {
                    byte & 0x0F
                };
                *o = table[usize::from(code)] * m;
            }
        }
        i += end;
        k += end;
    }
}

/// FP8 128×128-block elements `start ..`: `e4m3 × weight_scale_inv`, one run of a row
/// within one block at a time (the scale is fixed along it).
fn fp8_block_range(
    codes: &[u8],
    scales: &[f32],
    cols: usize,
    block: usize,
    start: usize,
    out: &mut [f32],
) {
    let block = block.max(1);
    let (mut i, mut k) = (start, 0);
    while k < out.len() {
        let (r, c) = (i / cols, i % cols);
        let end = ((c / block + 1) * block).min(cols) - c;
        let end = end.min(out.len() - k);
        let s = scales
            .get((r / block) * cols.div_ceil(block) + c / block)
            .copied()
            .unwrap_or(f32::NAN);
        for (o, &q) in out[k..k + end].iter_mut().zip(&codes[i..i + end]) {
            *o = fp8::e4m3_to_f32(q) * s;
        }
        i += end;
        k += end;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{quantize, quantize_bytes, to_f32};
    use super::*;
    use crate::checkpoint::Dtype;

    /// The error report's sums from the build this CPU runs (AVX-512 or AVX2 where it has
    /// them) are the baseline build's, bit for bit, infinities included; a NaN sum is a
    /// NaN in both, its payload aside (which NaN an add keeps depends on the operand order
    /// the compiler picks, and the report prints any NaN as `NaN`).
    #[test]
    fn the_vector_build_of_the_error_sums_is_the_baseline_build() {
        let x = crate::quant::bnb4::tests::awkward_values(64 * 40 + 13);
        let y: Vec<f32> = x.iter().rev().map(|v| v * 0.75).collect();
        let bits = |e: ErrorStats| {
            let f = [e.sum_abs, e.max_abs, e.sum_sq_ref, e.sum_sq_err];
            let canonical = |v: f64| if v.is_nan() { f64::NAN } else { v };
            (f.map(|v| canonical(v).to_bits()), e.count)
        };
        for n in [0, 7, 8, 100, x.len()] {
            let fast = ErrorStats::measure(&x[..n], &y[..n]);
            let base = ErrorStats::measure_portable(&x[..n], &y[..n]);
            assert_eq!(bits(fast), bits(base), "{n} elements");
            // The largest error as first defined: `f64::max` over every |x − y|.
            let max = x[..n].iter().zip(&y[..n]).fold(0f64, |m, (&a, &b)| {
                m.max((f64::from(a) - f64::from(b)).abs())
            });
            assert_eq!(fast.max_abs.to_bits(), max.to_bits(), "{n} elements: max");
        }
    }

    /// bnb 4-bit elements from any start, odd or even, on or off a block boundary, and of
    /// any length: the values of the reference dequantization, bit for bit.
    #[test]
    fn bnb_ranges_from_any_start_are_the_reference_values() {
        let x = crate::quant::bnb4::tests::awkward_values(64 * 40 + 33);
        for kind in [bnb4::Kind::Nf4, bnb4::Kind::Fp4] {
            let (packed, absmax) = bnb4::quantize(kind, &x, 64);
            let mut want = vec![0f32; x.len()];
            bnb4::dequantize(kind, &packed, &absmax, 64, x.len(), &mut want);
            let table = kind.table();
            for (start, len) in [(0, 64), (1, 64), (63, 2), (64, 129), (65, 130), (2000, 593)] {
                let mut got = vec![0f32; len];
                bnb_range(&table, &packed, &absmax, 64, start, &mut got);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want[start..start + len]),
                    "{kind:?} {start}+{len}"
                );
            }
        }
    }

    /// From bytes or from float32, chunked or whole: the same codes, scales, values and
    /// error report, for every format, over sizes that cut blocks and chunks.
    #[test]
    fn the_byte_path_and_chunking_change_nothing() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let bytes: Vec<u8> = (0..(3 * CHUNK + 333) * 2)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s & 0x3F) as u8 // small exponents: finite bf16 values
            })
            .collect();
        let x = to_f32(Dtype::Bf16, &bytes);
        let shape = [x.len() as u64 / 111, 111];
        let n = (shape[0] * shape[1]) as usize;
        let (bytes, x) = (&bytes[..2 * n], &x[..n]);
        for name in crate::quant::Format::NAMES {
            let format = crate::quant::Format::parse(name).unwrap();
            let whole = quantize(format, x, &shape);
            let (q, err) = quantize_bytes(format, Dtype::Bf16, bytes, &shape);
            assert_eq!(q, whole, "{name}: codes and scales");
            assert_eq!(err, whole.error_against(x), "{name}: error report");
            let mut chunked = vec![0f32; n];
            Dequantizer::new(&q).all(&mut chunked);
            let mut one = vec![0f32; n];
            Dequantizer::new(&q).range(0, &mut one);
            assert_eq!(
                chunked.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{name}: chunked dequantization"
            );
        }
    }
}
