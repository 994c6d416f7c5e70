// FP8 E4M3 with per-tensor, per-row and 128x128-block scales. The scale is the CPU
// reference's: s = 448 / amax (1 when amax is 0 or not finite), q = e4m3(x * s), and the
// stored dequant multiplier is 1 / s.

__device__ __forceinline__ float fp8_scale(float amax) {
    return (amax == 0.0f || !isfinite(amax)) ? 1.0f : __fdiv_rn(448.0f, amax);
}

// Fine-grained blocks, as transformers computes them: torch evaluates `448 / amax` as
// reciprocal(amax) * 448, two roundings (quant::fp8::block_scale_for).
__device__ __forceinline__ float fp8_block_scale(float amax) {
    return (amax == 0.0f || !isfinite(amax)) ? 1.0f : __fmul_rn(__frcp_rn(amax), 448.0f);
}

// max |x| of the whole tensor into *amax_bits (an unsigned max over the bit patterns of
// non-negative floats: order-independent, hence exact). NaN is skipped, as fmaxf does.
extern "C" __global__ void amax_bf16(const u16* x, i64 n, u32* amax_bits) {
    i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    float v[8];
    load8(x, i, n, v);
    float m = 0.0f;
    #pragma unroll
    for (int k = 0; k < 8; k++) m = fmaxf(m, fabsf(v[k]));
    m = group_max(m, 32);
    if ((threadIdx.x & 31) == 0) atomicMax(amax_bits, __float_as_uint(m));
}

extern "C" __global__ void fp8_quantize_tensor(const u16* x, i64 n, const u32* amax_bits, u8* q, float* scale) {
    float s = fp8_scale(__uint_as_float(*amax_bits));
    i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i == 0) *scale = __fdiv_rn(1.0f, s);
    if (i >= n) return;
    float v[8];
    load8(x, i, n, v);
    if (i + 8 <= n) {
        u64 packed = 0;
        #pragma unroll
        for (int k = 0; k < 8; k++) packed |= ((u64)e4m3(__fmul_rn(v[k], s))) << (8 * k);
        *reinterpret_cast<u64*>(q + i) = packed;
    } else {
        for (int k = 0; k < 8 && i + k < n; k++) q[i + k] = e4m3(__fmul_rn(v[k], s));
    }
}

// One CUDA block (256 threads) per row.
extern "C" __global__ void fp8_quantize_rows(const u16* x, i64 rows, i64 cols, u8* q, float* scales) {
    __shared__ float warp_max[8];
    i64 r = blockIdx.x;
    const u16* row = x + r * cols;
    float m = 0.0f;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(bf16_to_f32(row[c])));
    m = group_max(m, 32);
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        float w = 0.0f;
        for (int k = 0; k < 8; k++) w = fmaxf(w, warp_max[k]);
        warp_max[0] = w;
    }
    __syncthreads();
    float s = fp8_scale(warp_max[0]);
    if (threadIdx.x == 0) scales[r] = __fdiv_rn(1.0f, s);
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) q[r * cols + c] = e4m3(__fmul_rn(bf16_to_f32(row[c]), s));
}

// One CUDA block (256 threads) per 128x128 tile; grid (ceil(cols/128), ceil(rows/128)).
// A full tile with cols % 8 == 0 is held in registers: each thread loads 8 rows' worth
// of one 16-byte column group, so the tensor is read once; edge tiles take a plain loop.
extern "C" __global__ void fp8_quantize_blocks(const u16* x, i64 rows, i64 cols, u8* q, float* scales) {
    __shared__ float warp_max[8];
    i64 r0 = (i64)blockIdx.y * 128, c0 = (i64)blockIdx.x * 128;
    i64 r1 = r0 + 128 < rows ? r0 + 128 : rows, c1 = c0 + 128 < cols ? c0 + 128 : cols;
    bool full = (r1 - r0 == 128) && (c1 - c0 == 128) && (cols % 8 == 0);
    int g = threadIdx.x & 15, rb = threadIdx.x >> 4;  // column group (8 cols), first row
    float v[8][8];
    float m = 0.0f;
    if (full) {
        #pragma unroll
        for (int j = 0; j < 8; j++) {
            i64 idx = (r0 + rb + 16 * j) * cols + c0 + 8 * g;
            load8(x, idx, idx + 8, v[j]);
            #pragma unroll
            for (int k = 0; k < 8; k++) m = fmaxf(m, fabsf(v[j][k]));
        }
    } else {
        i64 w = c1 - c0, cells = (r1 - r0) * w;
        for (i64 k = threadIdx.x; k < cells; k += blockDim.x) m = fmaxf(m, fabsf(bf16_to_f32(x[(r0 + k / w) * cols + c0 + k % w])));
    }
    m = group_max(m, 32);
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        float a = 0.0f;
        for (int k = 0; k < 8; k++) a = fmaxf(a, warp_max[k]);
        warp_max[0] = a;
    }
    __syncthreads();
    float s = fp8_block_scale(warp_max[0]);
    if (threadIdx.x == 0) scales[blockIdx.y * gridDim.x + blockIdx.x] = __fdiv_rn(1.0f, s);
    if (full) {
        #pragma unroll
        for (int j = 0; j < 8; j++) {
            u64 packed = 0;
            #pragma unroll
            for (int k = 0; k < 8; k++) packed |= ((u64)e4m3(__fmul_rn(v[j][k], s))) << (8 * k);
            *reinterpret_cast<u64*>(q + (r0 + rb + 16 * j) * cols + c0 + 8 * g) = packed;
        }
    } else {
        i64 w = c1 - c0, cells = (r1 - r0) * w;
        for (i64 k = threadIdx.x; k < cells; k += blockDim.x) {
            i64 idx = (r0 + k / w) * cols + c0 + k % w;
            q[idx] = e4m3(__fmul_rn(bf16_to_f32(x[idx]), s));
        }
    }
}

// out = bf16(e4m3(q) * scale); `group` maps an element to its scale:
// mode 0 tensor, 1 row (cols), 2 tile (cols, 128x128).
extern "C" __global__ void fp8_dequantize(const u8* q, const float* scales, u16* out, i64 n, i64 cols, int mode) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    i64 r, c;
    divmod(i, cols, r, c);
    i64 g = mode == 0 ? 0 : mode == 1 ? r : (r / 128) * ((cols + 127) / 128) + c / 128;
    out[i] = f32_to_bf16(__fmul_rn(e4m3_to_f32(q[i]), scales[g]));
}
