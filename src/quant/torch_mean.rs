//! torch's float32 `mean` on CUDA, bit for bit.
//!
//! Input: a contiguous slice of f32 (bitsandbytes' absmax). Output: the f32 that
//! `tensor.mean()` returns for it on an H200 with torch 2.11, which bitsandbytes' double
//! quantization stores as its `offset`. Float addition is not associative, so matching
//! that value means adding in ATen's order: `mean_kernel_cuda` runs `gpu_reduce_kernel`
//! (`aten/src/ATen/native/cuda/Reduce.cuh`) with `MeanOps` (sum in float, then
//! `sum * (1.0f / (float)n)`), and `setReduceConfig` picks the launch from the length and
//! the device: block width, four-wide vector loads from 128 elements on, and a split
//! across CTAs (a global reduce) when each thread would see 256 values or more.
//!
//! [`MeanConfig`] is that launch; [`cuda_mean`] replays it on the CPU. The CUDA kernels
//! `dq_mean_partials` / `dq_mean_finish` (kernels/bnb4.cu) replay it on the device with
//! the same config, so both paths give the same bits on any GPU. The target is fixed to
//! torch 2.11 on an H200 ([`H200_TORCH_2_11`]): the config depends on the SM count only
//! for lengths above about 4.3 million, where bitsandbytes on another GPU may differ from
//! ours in the last bit; the warp's order of shuffles is a torch release's (decreasing
//! offsets from pytorch#164790, October 2025, until its backout in pytorch#181819, April
//! 2026; increasing before and after). Not handled: lengths of 2^31 and more (torch
//! splits those into 32-bit sub-iterations; [`MeanConfig::new`] returns `None`).

/// The device properties `setReduceConfig` reads, and the torch release's warp order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub sm_count: usize,
    pub max_threads_per_sm: usize,
    pub warp_order: WarpOrder,
}

/// The offsets of `block_x_reduce`'s `shfl_down` steps within a warp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarpOrder {
    /// 16, 8, 4, 2, 1: a halving tree (torch 2.10, 2.11).
    Decreasing,
    /// 1, 2, 4, 8, 16 (torch before 2.10, ROCm, and after pytorch#181819).
    Increasing,
}

/// torch 2.11 on an H200 SXM: 132 SMs of 2048 threads.
pub const H200_TORCH_2_11: Target = Target {
    sm_count: 132,
    max_threads_per_sm: 2048,
    warp_order: WarpOrder::Decreasing,
};

/// `mnt_wrapper<float>::MAX_NUM_THREADS`.
const MAX_THREADS: usize = 512;
/// `input_vec_size` (= `vt0`) of `gpu_reduce_kernel<float, float>`; also the number of
/// accumulators per thread.
const VEC: usize = 4;
const MIN_VALUES_PER_THREAD: usize = 16;
const MAX_VALUES_PER_THREAD: usize = 256;

/// The launch `setReduceConfig` picks for a full reduction of `n` contiguous f32 (one
/// output, so `blockDim.y` is 1 and the block-y reduce is a no-op).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeanConfig {
    pub n: usize,
    /// Threads per CTA (`blockDim.x`), a power of two up to 512.
    pub block: usize,
    /// CTAs along the reduction (`gridDim.y`); above 1 a global reduce follows.
    pub ctas: usize,
    /// Four-wide vector loads (`input_vectorized_thread_reduce_impl`).
    pub vectorized: bool,
    pub warp_order: WarpOrder,
}

impl MeanConfig {
    /// `setReduceConfig` for `n` values on `target`; `None` for none or 2^31 and more.
    pub fn new(n: usize, target: Target) -> Option<MeanConfig> {
        if n == 0 || n > i32::MAX as usize {
            return None;
        }
        let vectorized = n >= 128;
        let dim0 = if vectorized { n / VEC } else { n };
        let block = if dim0 < MAX_THREADS {
            last_pow2(dim0)
        } else {
            MAX_THREADS
        };
        // `values_per_thread` counts elements, not vectors, in torch too.
        let values_per_thread = n.div_ceil(block);
        let split_across_warps = values_per_thread >= MIN_VALUES_PER_THREAD;
        let target_grid = target
            .sm_count
            .saturating_mul(target.max_threads_per_sm / block);
        let mut ctas = 1;
        if split_across_warps && values_per_thread >= MAX_VALUES_PER_THREAD && target_grid >= 1 {
            let by_grid = target_grid;
            let by_min = values_per_thread.div_ceil(MIN_VALUES_PER_THREAD);
            let by_max = values_per_thread.div_ceil(MAX_VALUES_PER_THREAD);
            ctas = by_grid.min(by_min).max(by_max);
        }
        Some(MeanConfig {
            n,
            block,
            ctas,
            vectorized,
            warp_order: target.warp_order,
        })
    }

    /// `MeanOps::factor`: `static_cast<float>(1) / numel`, the count rounded to f32 first.
    pub fn factor(&self) -> f32 {
        1.0 / self.n as f32
    }
}

/// `last_pow2` of Reduce.cuh: the largest power of two not above `n` (1 for 0).
fn last_pow2(n: usize) -> usize {
    if n == 0 {
        1
    } else {
        1 << n.ilog2()
    }
}

/// `torch.mean` of a freshly allocated (16-byte aligned) f32 tensor with torch 2.11 on an
/// H200; 0 for an empty slice (torch gives NaN; bitsandbytes never asks).
pub fn cuda_mean(values: &[f32]) -> f32 {
    cuda_mean_on(values, H200_TORCH_2_11, 0)
}

/// As [`cuda_mean`] for a tensor whose data starts `shift` elements (0..4) past a
/// 16-byte boundary, for `target`; `values.len()` of 2^31 and more falls back to an f64
/// sum (torch's own order there is not reproduced).
pub fn cuda_mean_on(values: &[f32], target: Target, shift: usize) -> f32 {
    let Some(cfg) = MeanConfig::new(values.len(), target) else {
        if values.is_empty() {
            return 0.0;
        }
        let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
        return (sum / values.len() as f64) as f32;
    };
    let partials = cta_partials(values, &cfg, shift % VEC);
    let sum = if cfg.ctas == 1 {
        partials[0]
    } else {
        global_reduce(&partials, &cfg)
    };
    sum * cfg.factor()
}

/// Each CTA's block-reduced value, in `blockIdx.y` order.
fn cta_partials(values: &[f32], cfg: &MeanConfig, shift: usize) -> Vec<f32> {
    let threads = if cfg.vectorized {
        vectorized_thread_values(values, cfg, shift)
    } else {
        strided_thread_values(values, cfg.block)
    };
    threads
        .chunks(cfg.block)
        .map(|cta| block_x_reduce(cta.to_vec(), cfg.warp_order))
        .collect()
}

/// `thread_reduce_impl` (below 128 elements, one CTA): thread `t` adds elements
/// `t, t + block, …` into four accumulators in turn, then folds them left to right.
fn strided_thread_values(values: &[f32], block: usize) -> Vec<f32> {
    let n = values.len();
    (0..block)
        .map(|t| {
            let mut acc = [0f32; VEC];
            let mut idx = t;
            while idx + (VEC - 1) * block < n {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a += values[idx + i * block];
                }
                idx += block * VEC;
            }
            for a in acc.iter_mut() {
                if idx >= n {
                    break;
                }
                *a += values[idx];
                idx += block;
            }
            fold(acc)
        })
        .collect()
}

/// `input_vectorized_thread_reduce_impl`: after an unaligned head (threads `shift..4`
/// of CTA 0 take one element each), thread `t` of all `block * ctas` adds the vectors
/// `t, t + stride, …` lane-wise into its four accumulators; CTA 0's first threads then
/// add the tail that does not fill a vector into accumulator 0.
fn vectorized_thread_values(values: &[f32], cfg: &MeanConfig, shift: usize) -> Vec<f32> {
    let stride = cfg.block * cfg.ctas;
    let mut acc = vec![[0f32; VEC]; stride];
    let head = if shift > 0 { VEC - shift } else { 0 };
    for (t, &v) in values[..head.min(values.len())].iter().enumerate() {
        acc[t + shift][0] += v;
    }
    let body = &values[head.min(values.len())..];
    let vectors = body.len() / VEC;
    // Row by row in memory order; each thread's accumulators see its vectors in the same
    // order as on the device.
    for row in body[..vectors * VEC].chunks(stride * VEC) {
        for (a, v) in acc.iter_mut().zip(row.chunks_exact(VEC)) {
            for i in 0..VEC {
                a[i] += v[i];
            }
        }
    }
    for (a, &v) in acc.iter_mut().zip(&body[vectors * VEC..]) {
        a[0] += v;
    }
    acc.into_iter().map(fold).collect()
}

/// The accumulators combined as `((a0 + a1) + a2) + a3`.
fn fold(acc: [f32; VEC]) -> f32 {
    acc[1..].iter().fold(acc[0], |s, &a| s + a)
}

/// `block_x_reduce`: halving through shared memory down to a warp of 32 (thread `x` takes
/// thread `x + offset`), then `shfl_down` steps in `order`; lane 0 holds the result.
/// `v.len()` is a power of two.
fn block_x_reduce(mut v: Vec<f32>, order: WarpOrder) -> f32 {
    const WARP: usize = 32;
    let mut width = v.len();
    if width > WARP {
        let mut offset = width / 2;
        while offset >= WARP {
            halve(&mut v, offset);
            offset /= 2;
        }
        width = WARP;
    }
    match order {
        WarpOrder::Decreasing => {
            let mut offset = width / 2;
            while offset >= 1 {
                halve(&mut v, offset);
                offset /= 2;
            }
        }
        WarpOrder::Increasing => {
            let mut offset = 1;
            while offset < width {
                // Every lane takes lane `x + offset` as it was before this step; going up,
                // that lane is not yet updated. Lanes whose source is past the width do
                // not reach lane 0, so they are left out.
                for x in 0..width - offset {
                    v[x] += v[x + offset];
                }
                offset *= 2;
            }
        }
    }
    v[0]
}

/// One halving step: lane `x < offset` takes lane `x + offset`, not yet updated.
fn halve(v: &mut [f32], offset: usize) {
    for x in 0..offset {
        v[x] += v[x + offset];
    }
}

/// `global_reduce` in the last CTA: thread `x` adds the CTA partials `x, x + block, …`
/// to zero, then the block reduces as above.
fn global_reduce(partials: &[f32], cfg: &MeanConfig) -> f32 {
    let mut v = vec![0f32; cfg.block];
    for row in partials.chunks(cfg.block) {
        for (a, &p) in v.iter_mut().zip(row) {
            *a += p;
        }
    }
    block_x_reduce(v, cfg.warp_order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_follow_set_reduce_config() {
        let c = |n| MeanConfig::new(n, H200_TORCH_2_11).map(|c| (c.block, c.ctas, c.vectorized));
        assert_eq!(c(0), None);
        assert_eq!(c(1), Some((1, 1, false)));
        assert_eq!(c(127), Some((64, 1, false)));
        assert_eq!(c(128), Some((32, 1, true)));
        assert_eq!(c(2047), Some((256, 1, true)));
        assert_eq!(c(2048), Some((512, 1, true)));
        // 255 * 512 values leave 255 per thread: one CTA; one more makes 256.
        assert_eq!(c(130_560), Some((512, 1, true)));
        assert_eq!(c(130_561), Some((512, 16, true)));
        // Past 528 * 16 values per thread the SM count caps the CTAs.
        assert_eq!(c(1 << 22), Some((512, 512, true)));
        assert_eq!(c(14_680_064), Some((512, 528, true)));
    }

    #[test]
    fn small_means_are_exact_where_order_cannot_matter() {
        assert_eq!(cuda_mean(&[3.5]), 3.5);
        assert_eq!(cuda_mean(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(cuda_mean(&vec![0.25; 1 << 20]), 0.25);
    }

    /// With small integers every order gives the exact sum, so any element added twice or
    /// missed (head, vectors, tail, CTA split) shows.
    #[test]
    fn every_element_is_added_once() {
        let lengths = (1..300).chain([2047, 2048, 2049, 130_560, 130_561, 262_147, 1_000_003]);
        for n in lengths {
            let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
            let sum: usize = (0..n).map(|i| i % 7).sum();
            let want = sum as f32 * (1.0 / n as f32);
            for shift in 0..4 {
                for warp_order in [WarpOrder::Decreasing, WarpOrder::Increasing] {
                    let target = Target {
                        warp_order,
                        ..H200_TORCH_2_11
                    };
                    let got = cuda_mean_on(&x, target, shift);
                    assert_eq!(got, want, "n={n} shift={shift} {warp_order:?}");
                }
            }
        }
    }

    /// The order is not index order: 1 + 2^-24 + 2^-24 loses both small terms left to
    /// right but keeps them when they are added together first. Decreasing offsets add
    /// lanes 1 and 3 first (lane 1 takes lane 3 at offset 2, then lane 0 takes lane 1);
    /// increasing ones add lanes 2 and 3 first (offset 1), then 0 + 1 and the two pairs.
    #[test]
    fn block_tree_order_is_visible() {
        let tiny = f32::EPSILON / 2.0;
        let v = [1.0, tiny, 0.0, tiny];
        let in_order = v.iter().fold(0f32, |s, &x| s + x);
        assert_eq!(in_order, 1.0);
        assert_eq!(
            block_x_reduce(v.to_vec(), WarpOrder::Decreasing),
            1.0 + f32::EPSILON
        );
        assert_eq!(block_x_reduce(v.to_vec(), WarpOrder::Increasing), 1.0);
        let w = [1.0, 0.0, tiny, tiny];
        assert_eq!(block_x_reduce(w.to_vec(), WarpOrder::Decreasing), 1.0);
        assert_eq!(
            block_x_reduce(w.to_vec(), WarpOrder::Increasing),
            1.0 + f32::EPSILON
        );
    }
}
