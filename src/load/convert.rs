//! Element conversion between checkpoint dtypes and target dtypes.
//!
//! Implicit conversion is allowed only where it is the standard widening or narrowing
//! among the training float types F32, F16 and BF16 (through f32, rounding to nearest
//! even: the `half` crate). Every other pair must be the same dtype, a plain copy. FP8,
//! integer and packed tensors are quantized data whose values need a scale (FP8's
//! `weight_scale_inv`) or a codebook; converting them element by element would load
//! wrong values, so [`convertible`] refuses them and binding reports E0507 before a
//! byte is read.

use crate::checkpoint::Dtype;

/// Whether a tensor of `src` can feed a param of `dst` without an explicit conversion.
pub fn convertible(src: Dtype, dst: Dtype) -> bool {
    src == dst && !matches!(src, Dtype::Other(_))
        || is_training_float(src) && is_training_float(dst)
}

/// F32, F16 and BF16: the types that convert among themselves implicitly.
pub fn is_training_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::Bf16)
}

/// Decodes one FP8 E4M3 (`e4m3fn`) byte: no infinities, `0x7F`/`0xFF` are NaN.
pub fn e4m3_to_f32(b: u8) -> f32 {
    E4M3_TO_F32[b as usize]
}

/// Every E4M3 byte's value, built bit by bit at compile time (a table lookup is what
/// dequantization's inner loop can afford; `powi` was most of its time).
const E4M3_TO_F32: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut b = 0usize;
    while b < 256 {
        let (exp, man) = (((b >> 3) & 0x0F) as u32, (b & 0x07) as u32);
        let sign = if b & 0x80 != 0 { 0x8000_0000u32 } else { 0 };
        let magnitude = if exp == 0x0F && man == 0x07 {
            0x7FC0_0000 // NaN
        } else if exp != 0 {
            ((exp + 120) << 23) | (man << 20)
        } else if man == 0 {
            0
        } else {
            // Subnormal: man × 2^-9, normalized: shift the top set bit into the hidden bit.
            let top = 31 - man.leading_zeros(); // 0..=2
            ((top + 118) << 23) | ((man << (23 - top)) & 0x7F_FFFF)
        };
        t[b] = f32::from_bits(sign | magnitude);
        b += 1;
    }
    t
};

/// FP8 E5M2 is the top byte of an IEEE half.
pub fn e5m2_to_f32(b: u8) -> f32 {
    half::f16::from_bits((b as u16) << 8).to_f32()
}

fn load_f32(src: Dtype, bytes: &[u8], i: usize) -> f32 {
    match src {
        Dtype::F32 => f32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ]),
        Dtype::F16 => half::f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        Dtype::Bf16 => half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        _ => 0.0, // excluded by `convertible`
    }
}

/// Converts `n = src.len() / src_dtype.size()` elements into `dst`
/// (`dst.len() == n * dst_dtype.size()`). The pair must be [`convertible`].
pub fn convert(src_dtype: Dtype, src: &[u8], dst_dtype: Dtype, dst: &mut [u8]) {
    if src_dtype == dst_dtype {
        dst.copy_from_slice(src);
        return;
    }
    let n = dst.len() / dst_dtype.size().max(1);
    match dst_dtype {
        Dtype::F32 => {
            for (i, out) in dst.chunks_exact_mut(4).enumerate() {
                out.copy_from_slice(&load_f32(src_dtype, src, i).to_le_bytes());
            }
        }
        Dtype::Bf16 => {
            for (i, out) in dst.chunks_exact_mut(2).enumerate() {
                out.copy_from_slice(
                    &half::bf16::from_f32(load_f32(src_dtype, src, i)).to_le_bytes(),
                );
            }
        }
        Dtype::F16 => {
            for (i, out) in dst.chunks_exact_mut(2).enumerate() {
                out.copy_from_slice(
                    &half::f16::from_f32(load_f32(src_dtype, src, i)).to_le_bytes(),
                );
            }
        }
        _ => debug_assert!(n == 0, "non-convertible pair reached convert"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table against the format's definition, every byte (NaN by its class).
    #[test]
    fn e4m3_table_is_the_definition() {
        for b in 0..=255u8 {
            let sign = if b & 0x80 != 0 { -1.0f64 } else { 1.0 };
            let (exp, man) = (((b >> 3) & 0x0F) as i32, (b & 0x07) as f64);
            let got = e4m3_to_f32(b);
            if exp == 0x0F && man == 7.0 {
                assert!(got.is_nan(), "{b:#04x}");
                continue;
            }
            let want = if exp == 0 {
                sign * man * 2f64.powi(-9)
            } else {
                sign * (1.0 + man / 8.0) * 2f64.powi(exp - 7)
            };
            assert_eq!(got as f64, want, "{b:#04x}");
            assert_eq!(got.is_sign_negative(), b & 0x80 != 0, "{b:#04x} sign");
        }
    }

    #[test]
    fn bf16_widens_exactly_and_narrows_with_rne() {
        let src: Vec<u8> = [1.5f32, -2.0, 3.0e-3]
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect();
        let mut wide = vec![0u8; 12];
        convert(Dtype::Bf16, &src, Dtype::F32, &mut wide);
        let mut back = vec![0u8; 6];
        convert(Dtype::F32, &wide, Dtype::Bf16, &mut back);
        assert_eq!(back, src);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to even (1.0).
        let halfway = (1.0f32 + 2f32.powi(-8)).to_le_bytes();
        let mut out = [0u8; 2];
        convert(Dtype::F32, &halfway, Dtype::Bf16, &mut out);
        assert_eq!(u16::from_le_bytes(out), 0x3F80);
    }

    #[test]
    fn e4m3_decodes_edges() {
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert!(e4m3_to_f32(0x7F).is_nan());
        assert_eq!(e4m3_to_f32(0x80), -0.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0);
    }

    #[test]
    fn e5m2_is_the_top_of_a_half() {
        assert_eq!(e5m2_to_f32(0x3C), 1.0);
        assert_eq!(e5m2_to_f32(0x7C), f32::INFINITY);
    }

    const ALL: [Dtype; 11] = [
        Dtype::F32,
        Dtype::F16,
        Dtype::Bf16,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
        Dtype::U8,
        Dtype::I8,
        Dtype::I32,
        Dtype::I64,
        Dtype::Other("BOOL"),
        Dtype::Other("F64"),
    ];

    /// The whole table: the 9 float pairs and the 7 same-dtype copies, nothing else.
    #[test]
    fn only_float_widening_narrowing_and_copies_are_implicit() {
        let allowed: Vec<(&str, &str)> = ALL
            .iter()
            .flat_map(|s| ALL.iter().map(move |d| (*s, *d)))
            .filter(|(s, d)| convertible(*s, *d))
            .map(|(s, d)| (s.name(), d.name()))
            .collect();
        let floats = ["F32", "F16", "BF16"];
        let mut want: Vec<(&str, &str)> = floats
            .iter()
            .flat_map(|s| floats.iter().map(move |d| (*s, *d)))
            .collect();
        want.extend(["F8_E4M3", "F8_E5M2", "U8", "I8", "I32", "I64"].map(|d| (d, d)));
        let sort = |mut v: Vec<(&'static str, &'static str)>| {
            v.sort_unstable();
            v
        };
        assert_eq!(sort(allowed), sort(want));
    }

    #[test]
    fn quantized_and_integer_sources_never_become_floats() {
        for src in [
            Dtype::F8E4M3,
            Dtype::F8E5M2,
            Dtype::U8,
            Dtype::I8,
            Dtype::I32,
        ] {
            assert!(!convertible(src, Dtype::Bf16), "{src:?}");
            assert!(!convertible(src, Dtype::F32), "{src:?}");
        }
        assert!(!convertible(Dtype::Bf16, Dtype::I8));
        assert!(!convertible(Dtype::Other("F64"), Dtype::Other("F64")));
    }
}
