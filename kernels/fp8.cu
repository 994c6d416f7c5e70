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

// ---- Version 2 of the 128x128-block quantizer (the default unless WMAP_KERNELS=v1) ----
// Same bytes as fp8_quantize_blocks. A full tile is read once into registers as raw
// bf16 words (8 x 16 bytes in flight per thread); the amax is an integer max over the
// magnitude bit patterns (bf16 patterns order like their values; a NaN shows as a
// pattern above inf, and then the float fold that skips NaN decides, as the CPU does);
// the conversion is the hardware's round-to-nearest-even, saturating E4M3 conversion,
// two elements per instruction, with its one difference from e4m3() patched: a NaN
// input gives 0xFF for negative NaN where the reference writes 0x7F.

// max over the 256 threads of the CTA; `scratch` (8 words) serves one call.
__device__ __forceinline__ u32 cta_max_u32(u32 v, u32* scratch) {
    v = __reduce_max_sync(0xffffffffu, v);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    u32 m = scratch[0];
    #pragma unroll
    for (int k = 1; k < 8; k++) m = max(m, scratch[k]);
    return m;
}

// Four bf16 (two words) times s, as four E4M3 bytes (element order, low byte first).
__device__ __forceinline__ u32 e4m3x4(u32 w0, u32 w1, float s) {
    unsigned short p0, p1;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;"
        : "=h"(p0) : "f"(__fmul_rn(bf16_hi(w0), s)), "f"(__fmul_rn(bf16_lo(w0), s)));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;"
        : "=h"(p1) : "f"(__fmul_rn(bf16_hi(w1), s)), "f"(__fmul_rn(bf16_lo(w1), s)));
    u32 q = (u32)p0 | ((u32)p1 << 16);
    // Bytes 0xFF (only a NaN converts to it: satfinite never makes NaN of a number)
    // become 0x7F: bit 7 of each byte that is 0xFF, then cleared.
    u32 nan_neg = ((q & 0x7f7f7f7fu) + 0x01010101u) & q & 0x80808080u;
    return q ^ nan_neg;
}

// An edge tile (or cols % 8 != 0): one element per thread per step, as fp8_quantize_blocks.
__device__ __noinline__ void fp8_tile_edge(const u16* x, i64 cols, i64 r0, i64 r1, i64 c0, i64 c1, u8* q,
                                           float* scale_out, u32* scratch) {
    i64 w = c1 - c0, cells = (r1 - r0) * w;
    float m = 0.0f;
    for (i64 k = threadIdx.x; k < cells; k += blockDim.x)
        m = fmaxf(m, fabsf(bf16_to_f32(x[(r0 + k / w) * cols + c0 + k % w])));
    float s = fp8_block_scale(__uint_as_float(cta_max_u32(__float_as_uint(m), scratch)));
    if (threadIdx.x == 0) *scale_out = __fdiv_rn(1.0f, s);
    for (i64 k = threadIdx.x; k < cells; k += blockDim.x) {
        i64 idx = (r0 + k / w) * cols + c0 + k % w;
        q[idx] = e4m3(__fmul_rn(bf16_to_f32(x[idx]), s));
    }
}

// One 256-thread CTA per 128x128 tile; grid (ceil(cols/128), ceil(rows/128)). Thread t
// owns columns 8 (t % 16) .. +8 of rows t / 16 + 16 j, j < 8.
extern "C" __global__ void __launch_bounds__(V2_THREADS) fp8_quantize_blocks_v2(const u16* x, i64 rows, i64 cols,
                                                                                u8* q, float* scales) {
    __shared__ u32 scratch[2][8];  // the integer amax, and the NaN fallback's
    const i64 r0 = (i64)blockIdx.y * 128, c0 = (i64)blockIdx.x * 128;
    const i64 r1 = r0 + 128 < rows ? r0 + 128 : rows, c1 = c0 + 128 < cols ? c0 + 128 : cols;
    float* scale_out = scales + (i64)blockIdx.y * gridDim.x + blockIdx.x;
    if (r1 - r0 != 128 || c1 - c0 != 128 || cols % 8 != 0) {
        fp8_tile_edge(x, cols, r0, r1, c0, c1, q, scale_out, scratch[0]);
        return;
    }
    const i64 first = (r0 + (threadIdx.x >> 4)) * cols + c0 + 8 * (threadIdx.x & 15);
    uint4 raw[8];
    #pragma unroll
    for (int j = 0; j < 8; j++) raw[j] = load16_stream(x + first + 16 * j * cols);
    u32 m2 = 0;
    #pragma unroll
    for (int j = 0; j < 8; j++) {
        m2 = __vmaxu2(m2, raw[j].x & 0x7fff7fffu);
        m2 = __vmaxu2(m2, raw[j].y & 0x7fff7fffu);
        m2 = __vmaxu2(m2, raw[j].z & 0x7fff7fffu);
        m2 = __vmaxu2(m2, raw[j].w & 0x7fff7fffu);
    }
    u32 bits = cta_max_u32(max(m2 & 0xffffu, m2 >> 16), scratch[0]);
    float amax = __uint_as_float(bits << 16);
    if (bits > 0x7f80u) {  // a NaN in the tile: max |x| over the rest
        float m = 0.0f;
        #pragma unroll
        for (int j = 0; j < 8; j++) {
            float v[8];
            unpack8_bf16(raw[j], v);
            #pragma unroll
            for (int k = 0; k < 8; k++) m = fmaxf(m, fabsf(v[k]));
        }
        amax = __uint_as_float(cta_max_u32(__float_as_uint(m), scratch[1]));
    }
    const float s = fp8_block_scale(amax);
    if (threadIdx.x == 0) *scale_out = __fdiv_rn(1.0f, s);
    #pragma unroll
    for (int j = 0; j < 8; j++) {
        uint2 out = make_uint2(e4m3x4(raw[j].x, raw[j].y, s), e4m3x4(raw[j].z, raw[j].w, s));
        *reinterpret_cast<uint2*>(q + first + 16 * j * cols) = out;
    }
}
