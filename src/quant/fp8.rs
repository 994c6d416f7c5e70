//! FP8 E4M3 (`e4m3fn`): conversion from float32 with round-to-nearest-even and
//! saturation to ±448 (CUDA's `__NV_SATFINITE`), and the three scaling recipes.

use rayon::prelude::*;

pub const E4M3_MAX: f32 = 448.0;

/// float32 → E4M3, round to nearest even (subnormals too), ±inf and overflow saturate to
/// ±448, NaN → 0x7F. Normal results round the float32 mantissa to 3 bits in integer
/// arithmetic and rebias the exponent (127 → 7); subnormal ones are multiples of 2^-9,
/// which scaling by 512 makes exact integers. Both are computed and one is selected, with
/// no branch, so a loop over a slice vectorizes.
#[inline(always)]
pub fn e4m3(x: f32) -> u8 {
    // Adding 2^23 to a value in [0, 8] rounds it to the nearest integer, ties to even, in
    // the FPU's own rounding; the integer is then the low bits of the sum.
    const SHIFT: f32 = 8_388_608.0;
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let abs = bits & 0x7FFF_FFFF;
    // |x| ≥ 2^-6: round to nearest even at bit 20, drop the low 20 bits, rebias. 0x43E is
    // 448's top 12 bits; anything above (inf included) saturates to 0x7E.
    let r = (abs + 0x7_FFFF + ((abs >> 20) & 1)) >> 20;
    let normal = r.min(0x43E).wrapping_sub(120 << 3);
    // |x| < 2^-6: a multiple of 2^-9 after rounding.
    let subnormal = (f32::from_bits(abs) * 512.0 + SHIFT)
        .to_bits()
        .wrapping_sub(SHIFT.to_bits());
    let code = if abs >= 0x3C80_0000 {
        normal
    } else {
        subnormal
    };
    // NaN is 0x7F whatever its sign.
    if abs > 0x7F80_0000 {
        0x7F
    } else {
        sign | code as u8
    }
}

pub use crate::load::e4m3_to_f32;

/// Elements widened at once by the per-tensor and per-channel recipes.
const RUN: usize = 16 << 10;

/// Per-tensor: one scale; `q = sat(x * s)`, `s = 448 / amax` (1 when amax is 0);
/// the stored scale is the dequant multiplier `1 / s`.
pub fn quantize_per_tensor(x: &[f32]) -> (Vec<u8>, f32) {
    quantize_per_tensor_with(x.len(), &|start, out: &mut [f32]| {
        out.copy_from_slice(&x[start..start + out.len()])
    })
}

/// [`quantize_per_tensor`] over `n` values that `fill(start, run)` widens a run at a
/// time: one pass for the tensor's amax (NaN skipped), a second for the codes. Widening
/// twice costs less than a float32 copy of the tensor.
pub fn quantize_per_tensor_with(
    n: usize,
    fill: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> (Vec<u8>, f32) {
    let amax = (0..n.div_ceil(RUN))
        .into_par_iter()
        .map_init(Vec::new, |buf, r| {
            buf.resize(RUN.min(n - r * RUN), 0f32);
            fill(r * RUN, buf);
            super::bnb4::absmax_of(buf)
        })
        .reduce(|| 0f32, f32::max);
    let s = scale_for(amax);
    let mut q = crate::load::zeroed(n);
    q.par_chunks_mut(RUN)
        .enumerate()
        .for_each_init(Vec::new, |buf, (r, out)| {
            buf.resize(out.len(), 0f32);
            fill(r * RUN, buf);
            encode_scaled(buf, s, out);
        });
    (q, 1.0 / s)
}

fn scale_for(amax: f32) -> f32 {
    if amax == 0.0 || !amax.is_finite() {
        1.0
    } else {
        E4M3_MAX / amax
    }
}

/// Per-channel: one scale per row of a `[rows, cols]` view.
pub fn quantize_per_channel(x: &[f32], cols: usize) -> (Vec<u8>, Vec<f32>) {
    let cols = cols.max(1);
    quantize_per_channel_with(x.len() / cols, cols, &|start, out: &mut [f32]| {
        out.copy_from_slice(&x[start..start + out.len()])
    })
}

/// [`quantize_per_channel`] over values that `fill(start, run)` widens a band of whole
/// rows at a time (at least one row, about [`RUN`] elements).
pub fn quantize_per_channel_with(
    rows: usize,
    cols: usize,
    fill: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> (Vec<u8>, Vec<f32>) {
    let cols = cols.max(1);
    let band = (RUN / cols).max(1);
    let mut q = crate::load::zeroed(rows * cols);
    let mut scales = vec![0f32; rows];
    q.par_chunks_mut(band * cols)
        .zip(scales.par_chunks_mut(band))
        .enumerate()
        .for_each_init(Vec::new, |buf, (b, (out, band_scales))| {
            buf.resize(out.len(), 0f32);
            fill(b * band * cols, buf);
            let rows = buf.chunks(cols).zip(out.chunks_mut(cols));
            for ((row, o), inv) in rows.zip(band_scales) {
                let s = scale_for(super::bnb4::absmax_of(row));
                encode_scaled(row, s, o);
                *inv = 1.0 / s;
            }
        });
    (q, scales)
}

/// `e4m3(v * s)` over a run, built for AVX2 where the CPU reports it (as in
/// `bnb4::encode_task`: exact operations, the same bytes).
fn encode_scaled(x: &[f32], s: f32, out: &mut [u8]) {
    widest_build!(encode_run => (x: &[f32], s: f32, out: &mut [u8]))
}

/// A fine-grained block's scale exactly as transformers' `Fp8Quantize` computes it: torch
/// evaluates `448 / amax` (a Python float over a tensor) as `reciprocal(amax) * 448`, two
/// roundings, which differs from the single division in about one block in a hundred.
fn block_scale_for(amax: f32) -> f32 {
    if amax == 0.0 || !amax.is_finite() {
        1.0
    } else {
        (1.0 / amax) * E4M3_MAX
    }
}

/// 128×128 blocks of a `[rows, cols]` view (DeepSeek-V3 / transformers "fp8"):
/// `weight_scale_inv` is `[ceil(rows/128), ceil(cols/128)]`, the dequantization multiplier
/// `1 / s`, with `s` computed as transformers computes it (`reciprocal(amax) * 448`).
pub fn quantize_blocks(x: &[f32], rows: usize, cols: usize, block: usize) -> (Vec<u8>, Vec<f32>) {
    quantize_blocks_with(rows, cols, block, &|start, out: &mut [f32]| {
        out.copy_from_slice(&x[start..start + out.len()])
    })
}

/// Columns widened at once per band of a matrix too wide for [`BAND`]: a whole number of
/// blocks, so a band's scratch stays `block × STRIPE` floats however wide the matrix.
const STRIPE: usize = 2048;

/// A band of `block` whole rows up to this many elements (4 MiB of f32, in L3) is widened
/// in one run: read from a checkpoint, that is one contiguous read per band where stripes
/// made one short read per row, each from a different place (4 KiB pieces of a 128-row
/// band were half of an FP8-block load's CPU).
const BAND: usize = 1 << 20;

/// [`quantize_blocks`] over values that `fill(start, run)` widens a run of one row at a
/// time (from a checkpoint's bf16 bytes, say), so no float32 copy of the tensor is made.
/// One task per band of `block` rows (it owns those output rows and that row of scales);
/// within it, stripes of whole blocks are widened into a scratch, measured, then encoded.
pub fn quantize_blocks_with(
    rows: usize,
    cols: usize,
    block: usize,
    fill: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> (Vec<u8>, Vec<f32>) {
    let (block, cols) = (block.max(1), cols.max(1));
    let (br, bc) = (rows.div_ceil(block), cols.div_ceil(block));
    let stripe = match block.checked_mul(cols) {
        Some(n) if n <= BAND => cols,
        _ => block * (STRIPE / block).max(1),
    };
    let mut q = crate::load::zeroed(rows * cols);
    let mut scales = vec![0f32; br * bc];
    q.par_chunks_mut(block * cols)
        .zip(scales.par_chunks_mut(bc))
        .enumerate()
        .for_each_init(Vec::new, |scratch, (band, (out, band_scales))| {
            let nrows = out.len() / cols;
            for c0 in (0..cols).step_by(stripe) {
                let width = stripe.min(cols - c0);
                scratch.resize(nrows * width, 0f32);
                if width == cols {
                    fill(band * block * cols, scratch);
                } else {
                    for (i, run) in scratch.chunks_exact_mut(width).enumerate() {
                        fill((band * block + i) * cols + c0, run);
                    }
                }
                let first = c0 / block;
                let ss = &mut band_scales[first..first + width.div_ceil(block)];
                encode_stripe(scratch, width, block, ss, out, cols, c0);
            }
        });
    (q, scales)
}

/// One stripe of a band: `x` is `nrows × width` values, the band's columns `c0..c0+width`.
/// Writes each block's dequant scale into `scales` and the codes into `out` (the band's
/// rows, `cols` wide). Built for AVX2 where the CPU reports it, as in
/// `bnb4::encode_task`: exact integer and float32 operations, so the same bytes.
fn encode_stripe(
    x: &[f32],
    width: usize,
    block: usize,
    scales: &mut [f32],
    out: &mut [u8],
    cols: usize,
    c0: usize,
) {
    widest_build!(encode_stripe_portable => (
        x: &[f32],
        width: usize,
        block: usize,
        scales: &mut [f32],
        out: &mut [u8],
        cols: usize,
        c0: usize,
    ))
}

#[inline(always)]
fn encode_stripe_portable(
    x: &[f32],
    width: usize,
    block: usize,
    scales: &mut [f32],
    out: &mut [u8],
    cols: usize,
    c0: usize,
) {
    // The largest |v| of each block as the largest magnitude bit pattern: an integer max
    // vectorizes where float max (which skips NaN) does not.
    let mut bits = vec![0u32; scales.len()];
    for row in x.chunks_exact(width) {
        for (m, seg) in bits.iter_mut().zip(row.chunks(block)) {
            *m = seg.iter().fold(*m, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
        }
    }
    let mut mult = vec![0f32; scales.len()];
    for (j, ((m, s), inv)) in bits
        .iter()
        .zip(&mut mult)
        .zip(scales.iter_mut())
        .enumerate()
    {
        // A NaN pattern falls back to the float fold, so NaN is skipped as before.
        let amax = if *m <= 0x7F80_0000 {
            f32::from_bits(*m)
        } else {
            x.chunks_exact(width)
                .flat_map(|row| row.chunks(block).nth(j).unwrap_or(&[]))
                .fold(0f32, |a, v| a.max(v.abs()))
        };
        *s = block_scale_for(amax);
        *inv = 1.0 / *s;
    }
    for (row, dst) in x.chunks_exact(width).zip(out.chunks_exact_mut(cols)) {
        let dst = &mut dst[c0..c0 + width];
        for ((seg, o), &s) in row.chunks(block).zip(dst.chunks_mut(block)).zip(&mult) {
            encode_run(seg, s, o);
        }
    }
}

/// `e4m3(v * s)` over a run: a plain loop that vectorizes.
#[inline(always)]
fn encode_run(x: &[f32], s: f32, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = e4m3(v * s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first, branchy definition, kept as the reference the fast one is checked against.
    fn e4m3_reference(x: f32) -> u8 {
        if x.is_nan() {
            return 0x7F;
        }
        let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
        let a = x.abs();
        if a >= 2f32.powi(-6) {
            let bits = a.to_bits();
            let mut exp = ((bits >> 23) & 0xFF) as i32 - 127;
            let man = bits & 0x7F_FFFF;
            let mut m3 = man >> 20;
            let rem = man & 0xF_FFFF;
            if rem > 0x8_0000 || (rem == 0x8_0000 && m3 & 1 == 1) {
                m3 += 1;
            }
            if m3 == 8 {
                m3 = 0;
                exp += 1;
            }
            let e = exp + 7;
            if e > 15 || (e == 15 && m3 == 7) {
                return sign | 0x7E; // saturate to 448
            }
            sign | ((e as u8) << 3) | m3 as u8
        } else {
            // Subnormal: multiples of 2^-9; scaling by 512 is exact.
            let m = (a * 512.0).round_ties_even() as u8; // 0..=8; 8 is the smallest normal
            sign | m
        }
    }

    /// The fast conversion against the reference: every bf16 pattern at several scales
    /// (so every rounding boundary is crossed), and a million pseudo-random float32s.
    #[test]
    fn fast_e4m3_is_the_reference() {
        let check =
            |x: f32| assert_eq!(e4m3(x), e4m3_reference(x), "{x:e} ({:#010x})", x.to_bits());
        for hi in 0..=u16::MAX {
            let x = f32::from_bits(u32::from(hi) << 16);
            for k in [1.0f32, 1.000_001, 0.999_999, 3.0, 100.0, 1e-3] {
                check(x * k);
            }
        }
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..1_000_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            check(f32::from_bits(s as u32));
        }
    }

    #[test]
    fn edges() {
        assert_eq!(e4m3(448.0), 0x7E);
        assert_eq!(e4m3(464.0), 0x7E, "464 would round to 480: saturates");
        assert_eq!(e4m3(1e9), 0x7E);
        assert_eq!(e4m3(f32::INFINITY), 0x7E);
        assert_eq!(e4m3(f32::NEG_INFINITY), 0xFE);
        assert_eq!(e4m3(f32::NAN), 0x7F);
        assert_eq!(e4m3(-0.0), 0x80);
        assert_eq!(e4m3(0.0), 0x00);
        assert_eq!(e4m3(1.0), 0x38);
        assert_eq!(e4m3(2f32.powi(-9)), 0x01, "smallest subnormal");
        assert_eq!(
            e4m3(2f32.powi(-10)),
            0x00,
            "half the smallest subnormal ties to even 0"
        );
        assert_eq!(e4m3(3.0 * 2f32.powi(-10)), 0x02, "1.5 ulps ties to even 2");
        assert_eq!(
            e4m3(2f32.powi(-6) - 2f32.powi(-12)),
            0x08,
            "rounds up into the normals"
        );
        // 1.0625 is halfway between 1.0 (0x38) and 1.125 (0x39): ties to even.
        assert_eq!(e4m3(1.0625), 0x38);
        assert_eq!(e4m3(1.1875), 0x3A);
    }

    /// The build [`encode_stripe`] picks on this CPU (AVX2 where it has it) against the
    /// baseline build, on a stripe with partial blocks, NaN, infinities and subnormals.
    #[test]
    fn the_vector_build_is_the_baseline_build() {
        let (rows, width, block) = (70, 300, 128);
        let x = crate::quant::bnb4::tests::awkward_values(rows * width);
        let nb = width.div_ceil(block);
        let (mut s, mut q) = (vec![0f32; nb], vec![0u8; rows * width]);
        encode_stripe(&x, width, block, &mut s, &mut q, width, 0);
        let (mut s0, mut q0) = (vec![0f32; nb], vec![0u8; rows * width]);
        encode_stripe_portable(&x, width, block, &mut s0, &mut q0, width, 0);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&s), bits(&s0), "scales");
        assert_eq!(q, q0, "codes");
    }

    /// The per-tensor and per-channel recipes as they were first written (over a float32
    /// copy, element by element), against the run-at-a-time ones.
    #[test]
    fn streamed_recipes_match_the_first_definitions() {
        let amax = |x: &[f32]| x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let encode = |x: &[f32], s: f32| x.iter().map(|&v| e4m3(v * s)).collect::<Vec<u8>>();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let x = crate::quant::bnb4::tests::awkward_values(3 * RUN + 77);
        let finite: Vec<f32> = x
            .iter()
            .map(|v| if v.is_finite() { *v } else { 1.5 })
            .collect();
        for x in [&x[..], &finite[..]] {
            let (q, inv) = quantize_per_tensor(x);
            let s = scale_for(amax(x));
            assert_eq!((q, inv.to_bits()), (encode(x, s), (1.0 / s).to_bits()));
            for cols in [1, 77, 4096, x.len()] {
                let (q, inv) = quantize_per_channel(x, cols);
                let rows: Vec<&[f32]> = x.chunks_exact(cols).collect();
                let s: Vec<f32> = rows.iter().map(|r| scale_for(amax(r))).collect();
                let want: Vec<u8> = rows
                    .iter()
                    .zip(&s)
                    .flat_map(|(r, &s)| encode(r, s))
                    .collect();
                let want_inv: Vec<f32> = s.iter().map(|s| 1.0 / s).collect();
                assert_eq!(q, want, "codes, cols {cols}");
                assert_eq!(bits(&inv), bits(&want_inv), "scales, cols {cols}");
            }
        }
    }

    /// 128×128 blocks, whether a band is widened whole (narrow matrices) or in stripes
    /// (wider than [`BAND`] allows), against the blocks as first defined: each block's
    /// amax (NaN skipped), its scale, and `e4m3(v × s)` element by element.
    #[test]
    fn blocks_match_their_definition_whole_bands_and_stripes() {
        let block = 128;
        for (rows, cols) in [(300, 333), (130, BAND / block + 3 * STRIPE + 5)] {
            let x = crate::quant::bnb4::tests::awkward_values(rows * cols);
            let (q, inv) = quantize_blocks(&x, rows, cols, block);
            let bc = cols.div_ceil(block);
            for (b, &got) in inv.iter().enumerate() {
                let (r0, c0) = (b / bc * block, b % bc * block);
                let (r1, c1) = ((r0 + block).min(rows), (c0 + block).min(cols));
                let at = |r: usize, c: usize| r * cols + c;
                let amax = (r0..r1)
                    .flat_map(|r| (c0..c1).map(move |c| (r, c)))
                    .fold(0f32, |m, (r, c)| m.max(x[at(r, c)].abs()));
                let s = block_scale_for(amax);
                assert_eq!(got.to_bits(), (1.0 / s).to_bits(), "{cols} cols: scale {b}");
                for r in r0..r1 {
                    for c in c0..c1 {
                        assert_eq!(
                            q[at(r, c)],
                            e4m3(x[at(r, c)] * s),
                            "{cols} cols: ({r}, {c})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn round_trips_every_finite_code() {
        for b in 0u8..=255 {
            if b & 0x7F == 0x7F {
                continue;
            }
            let v = e4m3_to_f32(b);
            assert_eq!(e4m3(v), b, "{b:#04x} = {v}");
        }
    }
}
