//! The golden scripts' input generator (`scripts/make_mean_goldens.py`, `hash32` and the
//! two value kinds there): integer hashing straight to float bit patterns, so Python
//! (torch int64 ops) and Rust build the same inputs without storing them.

/// A 32-bit hash of element `i` of stream `seed` (multipliers below 2^31, so torch's
/// int64 products do not overflow before the mask).
pub fn hash32(seed: u32, i: u64) -> u32 {
    let mut h = (i as u32)
        .wrapping_mul(0x27D4_EB2D)
        .wrapping_add(seed.wrapping_mul(0x1656_67B1).wrapping_add(0x3C6E_F372));
    h ^= h >> 16;
    h = h.wrapping_mul(0x045D_9F3B);
    h ^= h >> 16;
    h = h.wrapping_mul(0x045D_9F3B);
    h ^ (h >> 16)
}

/// Kind 0, absmax-like: positive, exponents 2^-7..2^0, a random 23-bit mantissa.
/// Kind 1, signed: either sign, exponents 2^-15..2^0 (cancellation, a wide range).
pub fn f32_value(kind: u32, seed: u32, i: u64) -> f32 {
    let h = hash32(seed, i);
    let mantissa = h & 0x7F_FFFF;
    let bits = match kind {
        0 => ((120 + ((h >> 23) & 7)) << 23) | mantissa,
        _ => (h & 0x8000_0000) | ((112 + ((h >> 23) & 15)) << 23) | mantissa,
    };
    f32::from_bits(bits)
}

pub fn f32_values(kind: u32, seed: u32, n: usize) -> Vec<f32> {
    (0..n as u64).map(|i| f32_value(kind, seed, i)).collect()
}

/// Weight-like bf16 bits: either sign, exponents 2^-17..2^-2, a random 7-bit mantissa.
pub fn bf16_weight(seed: u32, i: u64) -> u16 {
    let h = hash32(seed, i);
    let sign = (h >> 31) << 15;
    let exponent = (110 + ((h >> 23) & 15)) << 7;
    (sign | exponent | ((h >> 16) & 0x7F)) as u16
}
