// bitsandbytes 4-bit formats (NF4, FP4), version 2: the same bytes as bnb4.cu's
// bnb4_quantize_small and bnb4_dequantize (and so as the CPU reference), laid out for
// memory throughput. A tile is Q_UNITS (DQ_UNITS) * 256 units of 8 elements; unit
// j * 256 + threadIdx.x of a tile belongs to that thread of a 256-thread CTA, so each
// warp access is contiguous and every thread has several loads in flight before it uses
// the first. The CTAs (as many as fit on the device) stride over the tiles, loading the
// next tile before they work on the current one. Quantization blocks of bs <= 256
// elements are bs / 8 neighbouring lanes of one warp.

#define Q_UNITS 4   // quantize: 4 x 16 bytes of bf16 in flight per thread
#define DQ_UNITS 8  // dequantize: 8 x 4 bytes of codes (and absmax) in flight per thread

// ---- NF4 code by table lookup instead of a four-level select tree ----
// nf4_cell(y) = round(-15 y) + 15, clamped to 30: 31 cells of width 1/15, cell 0 at
// y = 1 and cell 30 at y = -1 (descending, so that NaN, whose pattern is above every
// finite one, and -inf land at the code-0 end). Valid for every y but y > 1.03 (only
// +inf occurs: a block whose absmax is subnormal has reciprocal inf, and those units
// clamp y to [-1, 1] first). Neighbouring NF4 midpoints are over 0.085 apart, so a
// cell holds at most one: code = (midpoints in cells above, i.e. below y) + (y > the
// cell's midpoint), the count of midpoints below y as the reference defines it. The
// host builds the table with this same function (cuda::tables, tested there against
// the reference for every kind of float).
__device__ __forceinline__ u32 nf4_cell(float y) {
    // 1.5 * 2^23 - 15 y lies in [2^23, 2^24) for |y| < 1.03, where the float's ulp is 1:
    // its low mantissa bits are round(-15 y). NaN and -inf give larger patterns.
    float r = __fmaf_rn(y, -15.0f, 12582912.0f);
    return min(__float_as_uint(r) - (0x4B400000u - 15u), 30u);
}

// Per cell (one 8-byte load): x = the cell's midpoint as float bits, or inf when it
// holds none; y = the midpoints in higher cells (below the cell's values).
struct Nf4Table {
    uint2 cell[32];
};

// Threads 0..63 copy the host's table; the caller synchronizes.
__device__ __forceinline__ void nf4_table_load(Nf4Table& t, const u32* table_in) {
    if (threadIdx.x < 64) reinterpret_cast<u32*>(&t)[threadIdx.x] = __ldg(table_in + threadIdx.x);
}

// All ones when a > b, else 0 (NaN compares false), so that (w << 4) + base - mask
// appends the code base + (y > thr) with integer adds.
__device__ __forceinline__ u32 gt_mask(float a, float b) {
    u32 r;
    asm("set.gt.u32.f32 %0, %1, %2;" : "=r"(r) : "f"(a), "f"(b));
    return r;
}

// w with the code of y appended as its low nibble. CLAMP: y may be above 1.03 (+inf).
template <int KIND, bool CLAMP>
__device__ __forceinline__ u32 push_code(u32 w, float y, const Nf4Table& t) {
    if (KIND == 0) {
        // fmaxf first: NaN becomes -1 (code 0), as it compares.
        uint2 e = t.cell[nf4_cell(CLAMP ? fminf(fmaxf(y, -1.0f), 1.0f) : y)];
        return (w << 4) + e.y - gt_mask(y, __uint_as_float(e.x));
    }
    const float unused[15] = {};
    return (w << 4) + bnb4_code(1, y, unused);
}

// Codes of 8 values, packed as bnb4_encode does: byte k = code[2k] << 4 | code[2k + 1].
template <int KIND, bool CLAMP>
__device__ __forceinline__ u32 pack8(const float (&v)[8], float inv, const Nf4Table& t) {
    u32 w = 0;
    #pragma unroll
    for (int k = 3; k >= 0; k--) {
        w = push_code<KIND, CLAMP>(w, __fmul_rn(v[2 * k], inv), t);
        w = push_code<KIND, CLAMP>(w, __fmul_rn(v[2 * k + 1], inv), t);
    }
    return w;
}

// Eight bf16 from element i on, zero past n, as raw words.
__device__ __forceinline__ uint4 load8_raw(const u16* x, i64 i, i64 n) {
    if (i + 8 <= n) return load16_stream(x + i);
    u32 w[4] = {0u, 0u, 0u, 0u};
    for (int k = 0; k < 8 && i + k < n; k++) w[k / 2] |= (u32)x[i + k] << (16 * (k & 1));
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// One unit: its block's absmax (every lane takes part in the group max, in range or
// not), then the packed codes; FULL when the whole unit is in range. The block's lanes:
// WIDTH, or `width` when WIDTH is 0 (one compiled variant for all block sizes).
template <int KIND, int WIDTH, bool FULL>
__device__ __forceinline__ void quantize_unit(uint4 raw, i64 u, i64 n, int width, float* absmax, u8* packed,
                                              const Nf4Table& t) {
    const int lanes = WIDTH ? WIDTH : width;
    float v[8];
    unpack8_bf16(raw, v);
    float m = 0.0f;
    #pragma unroll
    for (int k = 0; k < 8; k++) m = fmaxf(m, fabsf(v[k]));
    #pragma unroll
    for (int o = lanes / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o, lanes));
    if (!FULL && u * 8 >= n) return;
    if ((threadIdx.x & (lanes - 1)) == 0) absmax[u >> (__ffs(lanes) - 1)] = m;
    // A subnormal absmax has reciprocal inf (ftz), so y may be inf: clamp (rare).
    u32 codes;
    if (KIND == 0 && m > 0.0f && m < 0x1p-126f) codes = pack8<KIND, true>(v, rcp_approx(m), t);
    else codes = pack8<KIND, false>(v, rcp_approx(m), t);
    i64 nbytes = (n + 1) / 2;
    if (FULL || u * 4 + 4 <= nbytes) {
        *reinterpret_cast<u32*>(packed + u * 4) = codes;
    } else {
        for (int k = 0; k < 4 && u * 4 + k < nbytes; k++) packed[u * 4 + k] = (u8)(codes >> (8 * k));
    }
}

// width = bs / 8: the lanes of one quantization block (4, 8, 16 or 32), WIDTH the same
// as a constant or 0. The CTAs stride over the tiles (the grid is what fits on the
// device at once); each thread loads its part of the next tile before it encodes the
// current one, so loads stay in flight.
template <int KIND, int WIDTH>
__device__ __forceinline__ void quantize_tiles(const u16* x, u8* packed, float* absmax, i64 n, int width,
                                               const u32* cells, Nf4Table& table) {
    const i64 tile = Q_UNITS * V2_THREADS * 8, full_tiles = n / tile;
    i64 t = blockIdx.x;
    uint4 next[Q_UNITS];
    #pragma unroll
    for (int j = 0; j < Q_UNITS; j++)
        if (t < full_tiles) next[j] = load16_stream(x + t * tile + (j * V2_THREADS + threadIdx.x) * 8);
    if (KIND == 0) {
        nf4_table_load(table, cells);  // while the first loads are in flight
        __syncthreads();
    }
    for (; t < full_tiles; t += gridDim.x) {
        uint4 raw[Q_UNITS];
        #pragma unroll
        for (int j = 0; j < Q_UNITS; j++) raw[j] = next[j];
        const i64 t2 = t + gridDim.x;
        #pragma unroll
        for (int j = 0; j < Q_UNITS; j++)
            if (t2 < full_tiles) next[j] = load16_stream(x + t2 * tile + (j * V2_THREADS + threadIdx.x) * 8);
        const i64 unit0 = t * (Q_UNITS * V2_THREADS) + threadIdx.x;
        #pragma unroll
        for (int j = 0; j < Q_UNITS; j++)
            quantize_unit<KIND, WIDTH, true>(raw[j], unit0 + j * V2_THREADS, n, width, absmax, packed, table);
    }
    if (t * tile >= n) return;
    // The last, partial tile (t == full_tiles here): a plain per-unit loop.
    #pragma unroll 1
    for (int j = 0; j < Q_UNITS; j++) {
        const i64 u = t * (Q_UNITS * V2_THREADS) + j * V2_THREADS + threadIdx.x;
        quantize_unit<KIND, WIDTH, false>(load8_raw(x, u * 8, n), u, n, width, absmax, packed, table);
    }
}

// bs <= 256 (a power of two >= 32); any grid of 256-thread CTAs (best: as many as are
// resident at once, at most one per tile of 8 * Q_UNITS * 256 elements).
extern "C" __global__ void __launch_bounds__(V2_THREADS, 4) bnb4_quantize_v2(const u16* x, u8* packed, float* absmax,
                                                                          i64 n, int bs, int kind,
                                                                          const u32* cells) {
    __shared__ Nf4Table table;
    // bs 64 (the default) gets its own compiled variant; other sizes and FP4 share
    // one with the block's lanes as a run-time value (fewer variants: NVRTC time).
    if (kind == 0 && bs == 64) quantize_tiles<0, 8>(x, packed, absmax, n, 8, cells, table);
    else if (kind == 0) quantize_tiles<0, 0>(x, packed, absmax, n, bs / 8, cells, table);
    else quantize_tiles<1, 0>(x, packed, absmax, n, bs / 8, cells, table);
}

// 8 elements of a unit, exactly as bnb4_dequantize (any absmax, the last partial unit).
__device__ __noinline__ void dequantize_unit_exact(const u8* packed, const float* absmax, u16* out, i64 i, i64 n,
                                                   int bs, const float* table) {
    for (i64 e = i; e < n && e < i + 8; e++) {
        u8 byte = packed[e / 2];
        u8 c = (e & 1) ? (byte & 0xF) : (byte >> 4);
        out[e] = f32_to_bf16(__fmul_rn(table[c], absmax[e / bs]));
    }
}

// Whether table[code] * m converts exactly with the cvt: m finite (no product is NaN,
// where the cvt and f32_to_bf16 differ) and, unless 0, at least 2^-118, so that no
// product with a table entry (|entry| >= 2^-8 or 0 for NF4 and FP4) is subnormal, where
// this code does not rely on the cvt.
__device__ __forceinline__ bool cvt_exact(float m) {
    float a = fabsf(m);
    return (a >= 0x1p-118f && a < __int_as_float(0x7f800000)) || a == 0.0f;
}

// out = bf16(table[code] * absmax), 8 elements per unit: 4 bytes of codes in, 16 bytes
// out. Any power-of-two bs >= 8 (8-aligned units never straddle a block). One cvt per
// two elements when cvt_exact(absmax); otherwise the exact path. One CTA per tile of
// 8 * DQ_UNITS * 256 elements: every code and absmax load is issued before the first
// use, and with few registers many CTAs share an SM (measured faster on an H200 than
// CTAs striding over tiles, whose prefetch costs registers and so CTAs).
extern "C" __global__ void __launch_bounds__(V2_THREADS) bnb4_dequantize_v2(const u8* packed, const float* absmax,
                                                                            u16* out, i64 n, int bs,
                                                                            const float* table_in) {
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = table_in[threadIdx.x];
    const int shift = __ffs(bs / 8) - 1;
    const i64 unit0 = (i64)blockIdx.x * (DQ_UNITS * V2_THREADS) + threadIdx.x;
    if (((i64)blockIdx.x + 1) * (DQ_UNITS * V2_THREADS * 8) > n) {
        __syncthreads();
        #pragma unroll 1
        for (int j = 0; j < DQ_UNITS; j++)
            dequantize_unit_exact(packed, absmax, out, (unit0 + j * V2_THREADS) * 8, n, bs, table);
        return;
    }
    u32 w[DQ_UNITS];
    float m[DQ_UNITS];
    #pragma unroll
    for (int j = 0; j < DQ_UNITS; j++) {
        const i64 u = unit0 + j * V2_THREADS;
        w[j] = __ldcs(reinterpret_cast<const u32*>(packed) + u);
        m[j] = absmax[u >> shift];
    }
    __syncthreads();
    bool exact = false;  // an absmax not cvt_exact: redo those units below
    #pragma unroll
    for (int j = 0; j < DQ_UNITS; j++) {
        u32 r[4];
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            u32 byte = (w[j] >> (8 * k)) & 0xffu;
            r[k] = bf16x2_rn(__fmul_rn(table[byte >> 4], m[j]), __fmul_rn(table[byte & 0xfu], m[j]));
        }
        *reinterpret_cast<uint4*>(out + (unit0 + j * V2_THREADS) * 8) = make_uint4(r[0], r[1], r[2], r[3]);
        exact |= !cvt_exact(m[j]);
    }
    if (!exact) return;
    #pragma unroll 1
    for (int j = 0; j < DQ_UNITS; j++) {
        const i64 u = unit0 + j * V2_THREADS;
        if (!cvt_exact(absmax[u >> shift])) dequantize_unit_exact(packed, absmax, out, u * 8, n, bs, table);
    }
}
