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

/// Packs E2M1 codes of a row, element 2i in the low nibble.
fn pack_row(codes: &[u8], out: &mut [u8]) {
    for (j, pair) in codes.chunks(2).enumerate() {
        out[j] = pair[0] | (pair.get(1).copied().unwrap_or(0) << 4);
    }
}

pub const NVFP4_BLOCK: usize = 16;
pub const MXFP4_BLOCK: usize = 32;

/// Blocks of `block` along each row of a `[rows, cols]` view: per block, `scale` turns the
/// block's amax into its stored scale byte and the divisor its elements are coded against;
/// elements are `e2m1(x / divisor)`. Returns packed `[rows, ceil(cols/2)]` and the scale
/// bytes `[rows, ceil(cols/block)]`.
fn quantize_rows(
    x: &[f32],
    cols: usize,
    block: usize,
    scale: impl Fn(f32) -> (u8, f32) + Sync,
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
                    codes[b * block + j] = e2m1(v / divisor);
                }
            }
            pack_row(&codes, pout);
        });
    (packed, scales)
}

/// NVFP4 over a `[rows, cols]` view: packed `[rows, ceil(cols/2)]`, E4M3 block scales
/// `[rows, ceil(cols/16)]`, and the tensor scale `amax / (6 * 448)` (1 for an all-zero
/// tensor, so every block scale is 0 → 1 and every element 0).
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
    let (packed, scales) = quantize_rows(x, cols, NVFP4_BLOCK, |bmax| {
        let mut s = e4m3(bmax / (6.0 * ws2));
        if s & 0x7F == 0 {
            s = e4m3(1.0); // a zero scale becomes 1.0
        }
        (s, e4m3_to_f32(s) * ws2)
    });
    (packed, scales, ws2)
}

pub fn nvfp4_dequantize(packed: &[u8], scales: &[u8], ws2: f32, cols: usize, out: &mut [f32]) {
    let (bpr, ppr) = (cols.div_ceil(NVFP4_BLOCK), cols.div_ceil(2));
    out.par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            for (j, o) in row.iter_mut().enumerate() {
                let byte = packed[r * ppr + j / 2];
                let c = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
                let s = e4m3_to_f32(scales[r * bpr + j / NVFP4_BLOCK]);
                *o = (e2m1_to_f32(c) * s) * ws2;
            }
        });
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
    quantize_rows(x, cols, MXFP4_BLOCK, |bmax| {
        let e = mx_scale(bmax);
        (e, e8m0_to_f32(e))
    })
}

pub fn mxfp4_dequantize(packed: &[u8], scales: &[u8], cols: usize, out: &mut [f32]) {
    let (bpr, ppr) = (cols.div_ceil(MXFP4_BLOCK), cols.div_ceil(2));
    out.par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            for (j, o) in row.iter_mut().enumerate() {
                let byte = packed[r * ppr + j / 2];
                let c = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
                *o = e2m1_to_f32(c) * e8m0_to_f32(scales[r * bpr + j / MXFP4_BLOCK]);
            }
        });
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
        assert_eq!(back[0], (6.0 * 448.0) * ws2);
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
