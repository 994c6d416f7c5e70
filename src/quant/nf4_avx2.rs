//! NF4 codes with AVX2, for CPUs without AVX-512 (chosen at run time by `bnb4`): each
//! code is its definition, the count of midpoints the scaled value exceeds, as 15
//! compares and 15 subtractions per 8 values. Those run on every vector ALU port; the
//! binary search (4 compares, 11 blends) and a 32-entry table lookup (8 permutes, 6
//! blends) queue on the shuffle and blend ports, and on a 2 GHz AVX2 server both ran at
//! about a third of this one's rate.
//!
//! Input: blocks of float32 values and their block size (a multiple of 32). Output: each
//! block's absmax and its packed codes, the same bytes as [`super::bnb4`]'s portable
//! encoder (tests hold them together over every midpoint and its neighbours, NaN and
//! infinities). `y = v × inv` is one float32 multiply, as there; an ordered compare makes
//! NaN exceed nothing (code 0).

use std::arch::x86_64::*;

use super::bnb4::{for_each_block, NF4_MIDS};

/// Whether this CPU runs [`encode_task`] (and the baseline is not forced).
pub fn available() -> bool {
    super::has_avx2()
}

/// Blocks of `x` (`blocksize` a multiple of 32) into `absmax` and packed codes in `out`,
/// first element in the high nibble. A last block shorter than `blocksize` goes through
/// `tail`, the portable encoder of one block.
///
/// # Safety
/// The CPU must have AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub unsafe fn encode_task(
    x: &[f32],
    blocksize: usize,
    absmax: &mut [f32],
    out: &mut [u8],
    tail: impl Fn(&[f32], f32, &mut [u8]),
) {
    for_each_block(x, blocksize, absmax, out, |block, inv, dst| {
        if block.len() < blocksize {
            tail(block, inv, dst);
            return;
        }
        for (v, d) in block.chunks_exact(32).zip(dst.chunks_exact_mut(16)) {
            // SAFETY: the CPU has AVX2 (this function's contract); `v` is 32 values and
            // `d` 16 writable bytes (`chunks_exact` chunks).
            unsafe { _mm_storeu_si128(d.as_mut_ptr().cast(), packed32(v, inv)) };
        }
    });
}

/// The 16 packed bytes of 32 values scaled by `inv`.
///
/// # Safety
/// The CPU must have AVX2; `v` holds at least 32 values.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn packed32(v: &[f32], inv: f32) -> __m128i {
    // SAFETY: AVX2 as this function requires; 8 values from `at` (at most 24).
    let c = |at: usize| unsafe { codes8(&v[at..at + 8], inv) };
    // i32 codes (0..=15) to bytes. Both packs work within 128-bit lanes, so the bytes
    // come out as dwords of four codes in the order A0 B0 C0 D0 A1 B1 C1 D1 (X0: the first
    // four of the 8 values X, X1 the last four); one permute puts them back in order.
    let ab = _mm256_packs_epi32(c(0), c(8));
    let cd = _mm256_packs_epi32(c(16), c(24));
    let bytes = _mm256_permutevar8x32_epi32(
        _mm256_packus_epi16(ab, cd),
        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
    );
    // Each 16-bit word holds two codes, the first in its low byte: first << 4 | second
    // in the low byte, then the words narrowed to bytes (within lanes: qwords 0 and 2).
    let pair = _mm256_or_si256(_mm256_slli_epi16::<4>(bytes), _mm256_srli_epi16::<8>(bytes));
    let pair = _mm256_and_si256(pair, _mm256_set1_epi16(0xFF));
    let narrowed = _mm256_packus_epi16(pair, pair);
    _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(narrowed))
}

/// The NF4 codes (as i32) of 8 values scaled by `inv`.
///
/// # Safety
/// The CPU must have AVX2; `v` holds at least 8 values.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn codes8(v: &[f32], inv: f32) -> __m256i {
    // SAFETY: `v` holds 8 f32 (the caller slices 8); the load is unaligned.
    let v = unsafe { _mm256_loadu_ps(v.as_ptr()) };
    let y = _mm256_mul_ps(v, _mm256_set1_ps(inv));
    // Ordered compares: NaN exceeds nothing. True is all ones, -1: subtracting adds 1.
    let above = |thr: __m256| _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(y, thr));
    let level = |table: &[f32; 8], code: __m256i| {
        // SAFETY: 8 f32 from an array of 8.
        let t = unsafe { _mm256_loadu_ps(table.as_ptr()) };
        let c = above(_mm256_permutevar8x32_ps(t, code));
        _mm256_sub_epi32(_mm256_add_epi32(code, code), c)
    };
    let code = _mm256_sub_epi32(_mm256_setzero_si256(), above(_mm256_set1_ps(NF4_MIDS[7])));
    let code = level(&LEVELS[0], code);
    let code = level(&LEVELS[1], code);
    level(&LEVELS[2], code)
}

/// The binary search's thresholds after its first step, indexed by the code bits found so
/// far: step 2 compares with `NF4_MIDS[3 + 8b]`, step 3 with `[1 + 4i]`, step 4 with
/// `[2i]` (unused entries are never indexed).
const LEVELS: [[f32; 8]; 3] = {
    let m = NF4_MIDS;
    [
        [m[3], m[11], 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [m[1], m[5], m[9], m[13], 0.0, 0.0, 0.0, 0.0],
        [m[0], m[2], m[4], m[6], m[8], m[10], m[12], m[14]],
    ]
};
