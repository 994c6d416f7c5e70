// bitsandbytes 4-bit formats (NF4, FP4) and double quantization.
// Blocks of `bs` elements run over the flattened tensor; each thread owns 8 consecutive
// elements (one 16-byte load) and writes 4 packed bytes (first element high nibble).

__device__ __forceinline__ void bnb4_encode(int kind, const float* v, i64 i, i64 n, float inv,
                                            const float (&mids)[15], u8* packed) {
    u8 c[8];
    #pragma unroll
    for (int k = 0; k < 8; k++) c[k] = bnb4_code(kind, __fmul_rn(v[k], inv), mids);
    i64 byte0 = i / 2, nbytes = (n + 1) / 2;
    if (byte0 + 4 <= nbytes) {
        u32 w = 0;
        #pragma unroll
        for (int k = 0; k < 4; k++) w |= ((u32)((c[2 * k] << 4) | c[2 * k + 1])) << (8 * k);
        *reinterpret_cast<u32*>(packed + byte0) = w;
    } else {
        for (int k = 0; k < 4 && byte0 + k < nbytes; k++) packed[byte0 + k] = (u8)((c[2 * k] << 4) | c[2 * k + 1]);
    }
}

// bs <= 256: groups of bs/8 lanes inside a warp share one block.
extern "C" __global__ void bnb4_quantize_small(const u16* x, u8* packed, float* absmax, i64 n, int bs,
                                               int kind, const float* mids_in) {
    float mids[15];
    #pragma unroll
    for (int k = 0; k < 15; k++) mids[k] = __ldg(mids_in + k);
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 i = t * 8;
    int width = bs / 8;
    float v[8];
    load8(x, i, n, v);
    float m = 0.0f;
    #pragma unroll
    for (int k = 0; k < 8; k++) m = fmaxf(m, fabsf(v[k]));
    m = group_max(m, width);
    if (i >= n) return;
    if ((threadIdx.x % width) == 0) absmax[i >> (__ffs(bs) - 1)] = m;  // bs is a power of two
    bnb4_encode(kind, v, i, n, rcp_approx(m), mids, packed);
}

// bs > 256: one CUDA block of bs/8 threads per quantization block.
extern "C" __global__ void bnb4_quantize_large(const u16* x, u8* packed, float* absmax, i64 n, int bs,
                                               int kind, const float* mids_in) {
    __shared__ float warp_max[32];
    float mids[15];
    #pragma unroll
    for (int k = 0; k < 15; k++) mids[k] = __ldg(mids_in + k);
    i64 i = (i64)blockIdx.x * bs + (i64)threadIdx.x * 8;
    float v[8];
    load8(x, i, n, v);
    float m = 0.0f;
    #pragma unroll
    for (int k = 0; k < 8; k++) m = fmaxf(m, fabsf(v[k]));
    m = group_max(m, 32);
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        float w = threadIdx.x < (blockDim.x + 31) / 32 ? warp_max[threadIdx.x] : 0.0f;
        w = group_max(w, 32);
        if (threadIdx.x == 0) warp_max[0] = w;
    }
    __syncthreads();
    m = warp_max[0];
    if (i >= n) return;
    if (threadIdx.x == 0) absmax[blockIdx.x] = m;
    bnb4_encode(kind, v, i, n, rcp_approx(m), mids, packed);
}

// out = bf16(table[code] * absmax): 8 elements per thread (one 4-byte load of codes, one
// absmax: 8-aligned elements never straddle a block of >= 32).
extern "C" __global__ void bnb4_dequantize(const u8* packed, const float* absmax, u16* out, i64 n, int bs,
                                           const float* table_in) {
    // Looked up by a code known only at run time: shared memory, not a register array
    // (which would spill to local memory).
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = table_in[threadIdx.x];
    __syncthreads();
    i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (i + 8 <= n) {
        u32 w = *reinterpret_cast<const u32*>(packed + i / 2);
        float m = absmax[i >> (__ffs(bs) - 1)];  // bs is a power of two
        u16 r[8];
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            u8 byte = (u8)(w >> (8 * k));
            r[2 * k] = f32_to_bf16(__fmul_rn(table[byte >> 4], m));
            r[2 * k + 1] = f32_to_bf16(__fmul_rn(table[byte & 0xF], m));
        }
        uint4 q;
        q.x = r[0] | ((u32)r[1] << 16); q.y = r[2] | ((u32)r[3] << 16);
        q.z = r[4] | ((u32)r[5] << 16); q.w = r[6] | ((u32)r[7] << 16);
        *reinterpret_cast<uint4*>(out + i) = q;
    } else {
        for (i64 e = i; e < n; e++) {
            u8 byte = packed[e / 2];
            u8 c = (e & 1) ? (byte & 0xF) : (byte >> 4);
            out[e] = f32_to_bf16(__fmul_rn(table[c], absmax[e / bs]));
        }
    }
}

// Double quant, step 1: the offset, torch's float32 `absmax.mean()` with its order of
// additions (ATen Reduce.cuh, replayed on the CPU by src/quant/torch_mean.rs, which also
// picks the launch: `blockDim.x` threads per CTA, a power of two up to 512, and
// `gridDim.x` CTAs). Thread t of all CTAs keeps four accumulators: from 128 values on it
// adds the float4 vectors t, t + stride, ... lane-wise and CTA 0 adds the tail that fills
// no vector; below 128 (one CTA) it adds elements t, t + blockDim.x, ... to the
// accumulators in turn. Then ((a0 + a1) + a2) + a3, and torch's block_x_reduce over the
// CTA: shared-memory halving down to 32 threads (thread x takes thread x + offset), then
// the warp's shfl_down steps with offsets decreasing (torch 2.10, 2.11) or increasing
// (`increasing`: other releases), replayed here through shared memory in the same order.
// `absmax` is 16-byte aligned (a fresh allocation).
__device__ float dq_mean_block_tree(float v, float* shared, int increasing) {
    unsigned x = threadIdx.x, width = blockDim.x;
    shared[x] = v;
    for (; width > 32; width >>= 1) {
        __syncthreads();
        if (x < width / 2) {
            v = __fadd_rn(v, shared[x + width / 2]);
            shared[x] = v;
        }
    }
    if (!increasing) {
        for (unsigned offset = width / 2; offset > 0; offset >>= 1) {
            __syncthreads();
            if (x < offset) {
                v = __fadd_rn(v, shared[x + offset]);
                shared[x] = v;
            }
        }
        return v;
    }
    for (unsigned offset = 1; offset < width; offset <<= 1) {
        __syncthreads();
        float other = x + offset < width ? shared[x + offset] : 0.0f;
        __syncthreads();
        if (x + offset < width) {
            v = __fadd_rn(v, other);
            shared[x] = v;
        }
    }
    return v;
}

__device__ float dq_mean_thread(const float* absmax, i64 n, int vectorized) {
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (vectorized) {
        i64 stride = (i64)blockDim.x * gridDim.x, nvec = n / 4;
        const float4* vec = reinterpret_cast<const float4*>(absmax);
        for (i64 v = t; v < nvec; v += stride) {
            float4 q = vec[v];
            acc[0] = __fadd_rn(acc[0], q.x);
            acc[1] = __fadd_rn(acc[1], q.y);
            acc[2] = __fadd_rn(acc[2], q.z);
            acc[3] = __fadd_rn(acc[3], q.w);
        }
        i64 k = nvec * 4 + threadIdx.x;
        if (blockIdx.x == 0 && k < n) acc[0] = __fadd_rn(acc[0], absmax[k]);
    } else {
        i64 stride = blockDim.x, idx = t;
        for (; idx + 3 * stride < n; idx += 4 * stride) {
            for (int i = 0; i < 4; i++) acc[i] = __fadd_rn(acc[i], absmax[idx + i * stride]);
        }
        for (int i = 0; i < 4 && idx < n; i++, idx += stride) acc[i] = __fadd_rn(acc[i], absmax[idx]);
    }
    return __fadd_rn(__fadd_rn(__fadd_rn(acc[0], acc[1]), acc[2]), acc[3]);
}

// One CTA's sum; with one CTA it is the whole sum and thread 0 writes sum * factor.
extern "C" __global__ void dq_mean_partials(const float* absmax, i64 n, int vectorized, int increasing,
                                            float factor, float* partials, float* offset) {
    __shared__ float shared[512];
    float v = dq_mean_block_tree(dq_mean_thread(absmax, n, vectorized), shared, increasing);
    if (threadIdx.x != 0) return;
    if (gridDim.x == 1) *offset = __fmul_rn(v, factor);
    else partials[blockIdx.x] = v;
}

// torch's global reduce, in one CTA of the same width: thread x adds partials x,
// x + blockDim.x, ... to zero, then the same tree; thread 0 writes sum * factor.
extern "C" __global__ void dq_mean_finish(const float* partials, i64 ctas, int increasing, float factor,
                                          float* offset) {
    __shared__ float shared[512];
    float v = 0.0f;
    for (i64 k = threadIdx.x; k < ctas; k += blockDim.x) v = __fadd_rn(v, partials[k]);
    v = dq_mean_block_tree(v, shared, increasing);
    if (threadIdx.x == 0) *offset = __fmul_rn(v, factor);
}

// bitsandbytes' dQuantize over the sorted 256-entry dynamic map (no stochastic rounding).
__device__ u8 dynamic_code(const float* map, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f, val = map[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) { lower_pivot = pivot; lower = val; pivot += i; }
        else { upper_pivot = pivot; upper = val; pivot -= i; }
        val = map[pivot];
    }
    if (upper_pivot == 255) upper = map[upper_pivot];
    if (lower_pivot == 0) lower = map[lower_pivot];
    if (x > val) {
        float mid = __fmul_rn(__fadd_rn(upper, val), 0.5f);
        return x > mid ? (u8)upper_pivot : (u8)pivot;
    }
    float mid = __fmul_rn(__fadd_rn(lower, val), 0.5f);
    return x < mid ? (u8)lower_pivot : (u8)pivot;
}

// Step 2: (absmax - offset) in blocks of 256, one CUDA block of 256 threads each.
extern "C" __global__ void dq_quantize(const float* absmax, const float* offset, const float* map, u8* codes,
                                       float* nested, i64 n) {
    __shared__ float warp_max[8];
    i64 i = (i64)blockIdx.x * 256 + threadIdx.x;
    float v = i < n ? __fsub_rn(absmax[i], *offset) : 0.0f;
    float m = group_max(i < n ? fabsf(v) : 0.0f, 32);
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        float w = 0.0f;
        for (int k = 0; k < 8; k++) w = fmaxf(w, warp_max[k]);
        warp_max[0] = w;
        nested[blockIdx.x] = w;
    }
    __syncthreads();
    float inv = __frcp_rn(warp_max[0]);
    if (i < n) codes[i] = dynamic_code(map, __fmul_rn(v, inv));
}

// Undoes double quantization: absmax = (map[code] * nested[i / 256]) + offset, two roundings.
extern "C" __global__ void dq_absmax(const u8* codes, const float* nested, const float* offset, const float* map,
                                     float* absmax, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    absmax[i] = __fadd_rn(__fmul_rn(map[codes[i]], nested[i >> 8]), *offset);
}
