//! NF4 codes with AVX-512: a 32-entry table lookup per 16 values in place of the
//! binary search, for CPUs that have AVX-512F (chosen at run time by `bnb4`).
//!
//! Input: blocks of float32 values and their block size. Output: each block's absmax and
//! its packed codes, the same bytes as [`super::bnb4`]'s portable encoder (a test holds
//! them together over every midpoint and its neighbours, NaN and infinities).
//!
//! Why the lookup is exact: `y` (a value times its block's reciprocal) goes to bucket
//! `b = clamp(trunc((y + 1) × 16), 0, 31)`, a non-decreasing function of `y` (each
//! float operation rounds monotonically). The 15 midpoints fall in 15 different buckets
//! ([`BUCKETS`] checks that while compiling). So every midpoint in a bucket below `y`'s is
//! below `y`, every one in a bucket above is above it, and at most one, the bucket's own,
//! needs a compare: the code, the count of midpoints `y` exceeds, is `BASE[b] + (y >
//! MID[b])`. NaN goes to bucket 0, whose base is 0 and which no midpoint is in: code 0,
//! as the search gives.

use std::arch::x86_64::*;

use super::bnb4::NF4_MIDS;

/// A value's bucket, computed exactly as the vector code computes it.
const fn bucket(y: f32) -> usize {
    let t = (y + 1.0) * 16.0;
    let t = if t > 0.0 { t } else { 0.0 };
    let t = if t < 31.0 { t } else { 31.0 };
    t as usize
}

/// Each midpoint's bucket, checked to be all different.
const BUCKETS: [usize; 15] = {
    let mut b = [0usize; 15];
    let mut i = 0;
    while i < 15 {
        b[i] = bucket(NF4_MIDS[i]);
        assert!(
            i == 0 || b[i] > b[i - 1],
            "two NF4 midpoints share a bucket"
        );
        i += 1;
    }
    b
};

/// The midpoint in each bucket, +inf where there is none (never exceeded).
const MID: [f32; 32] = {
    let mut m = [f32::INFINITY; 32];
    let mut i = 0;
    while i < 15 {
        m[BUCKETS[i]] = NF4_MIDS[i];
        i += 1;
    }
    m
};

/// The midpoints in buckets below each bucket.
const BASE: [i32; 32] = {
    let mut base = [0i32; 32];
    let mut b = 0;
    while b < 32 {
        let mut i = 0;
        while i < 15 {
            if BUCKETS[i] < b {
                base[b] += 1;
            }
            i += 1;
        }
        b += 1;
    }
    base
};

/// Whether this CPU runs [`encode_task`] (and the baseline is not forced).
pub fn available() -> bool {
    super::has_avx2() && std::arch::is_x86_feature_detected!("avx512f")
}

/// Blocks of `x` (`blocksize` a multiple of 16) into `absmax` and packed codes in `out`,
/// first element in the high nibble. A last block shorter than `blocksize` goes through
/// `tail`, the portable encoder of one block.
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]).
#[target_feature(enable = "avx512f")]
pub unsafe fn encode_task(
    x: &[f32],
    blocksize: usize,
    absmax: &mut [f32],
    out: &mut [u8],
    tail: impl Fn(&[f32], f32, &mut [u8]),
) {
    super::bnb4::for_each_block(x, blocksize, absmax, out, |block, inv, dst| {
        if block.len() < blocksize {
            tail(block, inv, dst);
            return;
        }
        // Two runs of 16 per store: their 8 bytes each joined in a register, then 16
        // bytes written at once (a narrowing store per 16 values was slower).
        let mut pairs = block.chunks_exact(32).zip(dst.chunks_exact_mut(16));
        for (v, d) in &mut pairs {
            let both = _mm_unpacklo_epi64(codes16(&v[..16], inv), codes16(&v[16..], inv));
            // SAFETY: `d` is 16 writable bytes (a `chunks_exact_mut(16)` chunk).
            unsafe { _mm_storeu_si128(d.as_mut_ptr().cast(), both) };
        }
        let done = block.len() / 32 * 32;
        let rest = block[done..]
            .chunks_exact(16)
            .zip(dst[done / 2..].chunks_exact_mut(8));
        for (v, d) in rest {
            let one = _mm_cvtsi128_si64(codes16(v, inv)) as u64;
            d.copy_from_slice(&one.to_le_bytes());
        }
    });
}

/// The packed codes of 16 values scaled by `inv`: 8 bytes, in the low half of a register.
#[target_feature(enable = "avx512f")]
#[inline]
fn codes16(v: &[f32], inv: f32) -> __m128i {
    // SAFETY: `v` holds 16 f32 (a `chunks_exact(16)` chunk); the load is unaligned.
    let v = unsafe { _mm512_loadu_ps(v.as_ptr()) };
    let y = _mm512_mul_ps(v, _mm512_set1_ps(inv));
    let t = _mm512_mul_ps(_mm512_add_ps(y, _mm512_set1_ps(1.0)), _mm512_set1_ps(16.0));
    // `max(t, 0)` returns its second operand for NaN: NaN goes to bucket 0.
    let t = _mm512_min_ps(_mm512_max_ps(t, _mm512_setzero_ps()), _mm512_set1_ps(31.0));
    let b = _mm512_cvttps_epi32(t);
    // SAFETY: reads of 16 f32 / i32 from arrays of 32.
    let (mid_lo, mid_hi, base_lo, base_hi) = unsafe {
        (
            _mm512_loadu_ps(MID.as_ptr()),
            _mm512_loadu_ps(MID.as_ptr().add(16)),
            _mm512_loadu_si512(BASE.as_ptr().cast()),
            _mm512_loadu_si512(BASE.as_ptr().add(16).cast()),
        )
    };
    let mid = _mm512_permutex2var_ps(mid_lo, b, mid_hi);
    let base = _mm512_permutex2var_epi32(base_lo, b, base_hi);
    // Ordered compare: NaN exceeds nothing.
    let above = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, mid);
    let code = _mm512_mask_add_epi32(base, above, base, _mm512_set1_epi32(1));
    // Even elements to the high nibble, then each pair into the low byte of its u64.
    let shifted = _mm512_sllv_epi32(code, _mm512_set1_epi64(4));
    let pairs = _mm512_or_si512(shifted, _mm512_srli_epi64::<32>(shifted));
    _mm512_cvtepi64_epi8(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables against their definition: the code of every midpoint, its neighbours
    /// and the bucket edges is the count of midpoints it exceeds.
    #[test]
    fn base_and_mid_count_the_midpoints_exceeded() {
        let mut ys = vec![f32::NEG_INFINITY, -1.5, -1.0, 0.0, 1.0, 1.5, f32::INFINITY];
        for m in NF4_MIDS {
            ys.extend([m.next_down(), m, m.next_up()]);
        }
        for b in 0..=32 {
            let edge = b as f32 / 16.0 - 1.0;
            ys.extend([edge.next_down(), edge, edge.next_up()]);
        }
        for y in ys {
            let b = bucket(y);
            let code = BASE[b] + i32::from(y > MID[b]);
            let count = NF4_MIDS.iter().filter(|&&m| y > m).count();
            assert_eq!(code as usize, count, "{y:e}");
        }
    }
}
