//! FP4 E2M1 elements with block scales: NVFP4 (16-element blocks, E4M3 scales, an f32
//! tensor scale) and MXFP4 (32-element blocks, E8M0 scales, the OCP rule). Blocks run
//! along the last dim; a partial last block is padded with zeros. Element 2i goes to the
//! low nibble, 2i+1 to the high one. sm_90 has no FP4 instructions, so this is also what
//! the kernels do, in software.

use rayon::prelude::*;

use super::fp8::{e4m3, e4m3_to_f32};

/// E2M1 magnitudes, code 0..7.
pub const E2M1: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// float32 → E2M1, round to nearest even, saturating at ±6; NaN → 0; bit 3 is the sign
/// of a negative value.
pub fn e2m1(x: f32) -> u8 {
    const T: [f32; 7] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];
    let a = x.abs();
    let mut code = T.iter().filter(|&&t| a > t).count() as u8;
    // On a midpoint between codes k and k+1, the even one wins.
    if let Some(k) = T.iter().position(|&t| a == t) {
        if k % 2 == 1 {
            code += 1;
        }
    }
    if x < 0.0 && code != 0 {
        code | 0b1000
    } else {
        code
    }
}

pub fn e2m1_to_f32(c: u8) -> f32 {
    let v = E2M1[(c & 7) as usize];
    if c & 8 != 0 {
        -v
    } else {
        v
    }
}

/// ModelOpt's NVFP4 element code: like [`e2m1`], but every negative value keeps its sign
/// bit, so one that rounds to zero is `0b1000` (negative zero), as ModelOpt's `_cast_fp4`
/// (`(x < 0) << 3 | magnitude`) writes it.
pub fn e2m1_signed(x: f32) -> u8 {
    let code = e2m1(x) & 0b0111;
    if x < 0.0 {
        code | 0b1000
    } else {
        code
    }
}

/// ModelOpt's NVFP4 value table: negative zero (`0b1000`) reads as +0.0.
fn e2m1_to_f32_unsigned_zero(c: u8) -> f32 {
    if c & 7 == 0 {
        0.0
    } else {
        e2m1_to_f32(c)
    }
}

/// Packs E2M1 codes of a row, element 2i in the low nibble.
fn pack_row(codes: &[u8], out: &mut [u8]) {
    for (j, pair) in codes.chunks(2).enumerate() {
        out[j] = pair[0] | (pair.get(1).copied().unwrap_or(0) << 4);
    }
}

pub const NVFP4_BLOCK: usize = 16;
pub const MXFP4_BLOCK: usize = 32;
/// The smallest NVFP4 block scale, E4M3's smallest subnormal (ModelOpt's clamp).
const NVFP4_MIN_SCALE: f32 = 1.0 / 512.0;

/// Blocks of `block` along each row of a `[rows, cols]` view: per block, `scale` turns the
/// block's amax into its stored scale byte and the divisor its elements are coded against;
/// elements are `code(x / divisor)`. Returns packed `[rows, ceil(cols/2)]` and the scale
/// bytes `[rows, ceil(cols/block)]`.
fn quantize_rows(
    x: &[f32],
    cols: usize,
    block: usize,
    scale: impl Fn(f32) -> (u8, f32) + Sync,
    code: fn(f32) -> u8,
) -> (Vec<u8>, Vec<u8>) {
    let rows = x.len() / cols.max(1);
    let (bpr, ppr) = (cols.div_ceil(block), cols.div_ceil(2));
    let mut packed = vec![0u8; rows * ppr];
    let mut scales = vec![0u8; rows * bpr];
    packed
        .par_chunks_mut(ppr.max(1))
        .zip(scales.par_chunks_mut(bpr.max(1)))
        .enumerate()
        .for_each(|(r, (pout, sout))| {
            let row = &x[r * cols..(r + 1) * cols];
            let mut codes = vec![0u8; cols];
            for (b, blk) in row.chunks(block).enumerate() {
                let bmax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
                let (byte, divisor) = scale(bmax);
                sout[b] = byte;
                for (j, &v) in blk.iter().enumerate() {
                    codes[b * block + j] = code(v / divisor);
                }
            }
            pack_row(&codes, pout);
        });
    (packed, scales)
}

/// NVFP4 over a `[rows, cols]` view: packed `[rows, ceil(cols/2)]`, E4M3 block scales
/// `[rows, ceil(cols/16)]`, and the tensor scale `amax / (6 * 448)`, exactly as ModelOpt's
/// `NVFP4QTensor` (nvidia-modelopt 0.47) defines them: a block scale is
/// `block_amax / (6 * tensor_scale)`, 1.0 where that is zero, clamped to [2^-9, 448]
/// before the E4M3 cast (so it never underflows to zero), and elements keep their sign
/// bit ([`e2m1_signed`]). An all-zero tensor, where ModelOpt divides 0 by 0, gets tensor
/// scale 1, block scales 1.0 and zero codes.
pub fn nvfp4_quantize(x: &[f32], cols: usize) -> (Vec<u8>, Vec<u8>, f32) {
    let amax = x
        .par_iter()
        .fold(|| 0f32, |m, v| m.max(v.abs()))
        .reduce(|| 0f32, f32::max);
    let ws2 = if amax == 0.0 {
        1.0
    } else {
        amax / (6.0 * 448.0)
    };
    let block_scale = |bmax: f32| {
        let s = bmax / (6.0 * ws2);
        let s = if s == 0.0 { 1.0 } else { s };
        // A NaN (inf / inf) becomes the minimum, as fmaxf makes it on the GPU; clamp
        // would keep the NaN.
        let s = if s.is_nan() { NVFP4_MIN_SCALE } else { s };
        let s = e4m3(s.clamp(NVFP4_MIN_SCALE, super::fp8::E4M3_MAX));
        (s, e4m3_to_f32(s) * ws2)
    };
    let (packed, scales) = quantize_rows(x, cols, NVFP4_BLOCK, block_scale, e2m1_signed);
    (packed, scales, ws2)
}

/// The code of element `i` (row-major over `cols` columns; rows are packed separately).
fn code_at(packed: &[u8], cols: usize, i: usize) -> u8 {
    let cols = cols.max(1);
    let (r, j) = (i / cols, i % cols);
    let byte = packed
        .get(r * cols.div_ceil(2) + j / 2)
        .copied()
        .unwrap_or(0);
    if j % 2 == 0 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// NVFP4 element `i`: `e2m1 × (block scale × tensor scale)`, ModelOpt's association.
pub fn nvfp4_value(packed: &[u8], scales: &[u8], ws2: f32, cols: usize, i: usize) -> f32 {
    let cols = cols.max(1);
    let (r, j) = (i / cols, i % cols);
    let Some(&s) = scales.get(r * cols.div_ceil(NVFP4_BLOCK) + j / NVFP4_BLOCK) else {
        return f32::NAN;
    };
    e2m1_to_f32_unsigned_zero(code_at(packed, cols, i)) * (e4m3_to_f32(s) * ws2)
}

/// MXFP4 element `i`: `e2m1 × 2^(e − 127)`.
pub fn mxfp4_value(packed: &[u8], scales: &[u8], cols: usize, i: usize) -> f32 {
    let cols = cols.max(1);
    let (r, j) = (i / cols, i % cols);
    let Some(&e) = scales.get(r * cols.div_ceil(MXFP4_BLOCK) + j / MXFP4_BLOCK) else {
        return f32::NAN;
    };
    e2m1_to_f32(code_at(packed, cols, i)) * e8m0_to_f32(e)
}

pub fn nvfp4_dequantize(packed: &[u8], scales: &[u8], ws2: f32, cols: usize, out: &mut [f32]) {
    out.par_iter_mut()
        .enumerate()
        .for_each(|(i, o)| *o = nvfp4_value(packed, scales, ws2, cols, i));
}

/// floor(log2(a)) for a finite, positive float32, exactly (subnormals included).
fn floor_log2(a: f32) -> i32 {
    let bits = a.to_bits();
    let exp = ((bits >> 23) & 0xFF) as i32;
    if exp == 0 {
        let man = bits & 0x7F_FFFF;
        -127 - (man.leading_zeros() as i32 - 9)
    } else {
        exp - 127
    }
}

/// The OCP MX scale of a block as an E8M0 byte: `2^(floor(log2(amax)) - 2)`, clamped to
/// the representable 2^-127..2^127; an all-zero block gets the smallest scale.
pub fn mx_scale(amax: f32) -> u8 {
    if amax == 0.0 || !amax.is_finite() {
        return if amax.is_finite() { 0 } else { 254 };
    }
    (floor_log2(amax) - 2 + 127).clamp(0, 254) as u8
}

fn e8m0_to_f32(e: u8) -> f32 {
    2f32.powi(e as i32 - 127)
}

/// MXFP4 over a `[rows, cols]` view: packed `[rows, ceil(cols/2)]`, E8M0 scales
/// `[rows, ceil(cols/32)]`.
pub fn mxfp4_quantize(x: &[f32], cols: usize) -> (Vec<u8>, Vec<u8>) {
    let block_scale = |bmax: f32| {
        let e = mx_scale(bmax);
        (e, e8m0_to_f32(e))
    };
    quantize_rows(x, cols, MXFP4_BLOCK, block_scale, e2m1)
}

pub fn mxfp4_dequantize(packed: &[u8], scales: &[u8], cols: usize, out: &mut [f32]) {
    out.par_iter_mut()
        .enumerate()
        .for_each(|(i, o)| *o = mxfp4_value(packed, scales, cols, i));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2m1_ties_go_to_even() {
        let cases = [
            (0.25, 0.0),
            (0.75, 1.0),
            (1.25, 1.0),
            (1.75, 2.0),
            (2.5, 2.0),
            (3.5, 4.0),
            (5.0, 4.0),
            (5.0001, 6.0),
            (100.0, 6.0),
            (0.2499, 0.0),
            (0.2501, 0.5),
            (2.9, 3.0),
        ];
        for (x, want) in cases {
            assert_eq!(e2m1_to_f32(e2m1(x)), want, "{x}");
            assert_eq!(e2m1_to_f32(e2m1(-x)), -want, "-{x}");
        }
        assert_eq!(e2m1(f32::NAN), 0);
        assert_eq!(e2m1(f32::INFINITY), 7);
        assert_eq!(e2m1(-0.0), 0);
    }

    #[test]
    fn mx_scale_follows_the_ocp_rule() {
        assert_eq!(mx_scale(6.0), 127); // floor(log2 6) = 2 → 2^0
        assert_eq!(mx_scale(8.0), 128);
        assert_eq!(mx_scale(7.99), 127);
        assert_eq!(mx_scale(1.0), 125);
        assert_eq!(mx_scale(0.0), 0);
        assert_eq!(mx_scale(f32::from_bits(1)), 0, "clamped at 2^-127");
    }

    #[test]
    fn nvfp4_blocks_and_packing() {
        // One row of 16: amax 6 → tensor scale 6 / 2688, block scale e4m3(448) = 448.
        let mut row = vec![0f32; 16];
        row[0] = 6.0;
        row[1] = -0.75;
        row[2] = 3.0;
        let (p, s, ws2) = nvfp4_quantize(&row, 16);
        assert_eq!(ws2, 6.0 / 2688.0);
        assert_eq!(s, vec![0x7E]);
        assert_eq!(p[0], 0x07 | (0x0A << 4), "6 low, -1.0 (tie 0.75 → 1) high");
        assert_eq!(p[1] & 0x0F, 0x05, "3.0");
        let mut back = vec![0f32; 16];
        nvfp4_dequantize(&p, &s, ws2, 16, &mut back);
        // ModelOpt's order, block scale × tensor scale first; (6 × 448) × ws2 would
        // round to 6.0000005 here.
        assert_eq!(back[0], 6.0 * (448.0 * ws2));
        assert_eq!(back[0], 6.0);
    }

    #[test]
    fn nvfp4_keeps_signs_and_never_underflows_a_block_scale() {
        // Row amax 6000; block 1 peaks at 1e-7: 1e-7 / (6 × 6000/2688) is far below
        // 2^-9, so its scale clamps to 2^-9 (code 0x01) instead of flushing to zero.
        let mut row = vec![0f32; 32];
        row[0] = 6000.0;
        row[1] = -1.0; // -1 / (scale × ws2) rounds to zero: negative zero, 0b1000
        row[16] = 1e-7;
        row[17] = -1e-7;
        let (p, s, _) = nvfp4_quantize(&row, 32);
        assert_eq!(s[1], 0x01, "clamped to the smallest subnormal");
        assert_eq!(p[0] >> 4, 0b1000, "negative zero");
        assert_eq!(p[8], 0b1000 << 4, "+tiny → +0, -tiny → -0");
        assert_eq!(e2m1_signed(-0.0), 0, "-0.0 is not < 0");
        assert_eq!(e2m1_signed(-0.1), 0b1000);
        assert_eq!(e2m1_signed(-6.0), 0b1111);
    }

    #[test]
    fn zero_blocks_get_scale_one() {
        let x = vec![0f32; 40];
        let (p, s, ws2) = nvfp4_quantize(&x, 20);
        assert!(p.iter().all(|&b| b == 0));
        assert!(s.iter().all(|&b| b == 0x38), "1.0 in E4M3");
        assert_eq!(ws2, 1.0);
    }
}
