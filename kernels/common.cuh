// Shared device helpers. Every conversion here is written out bit by bit so that it
// matches the CPU reference in src/quant exactly; kernels are compiled with
// --fmad=false and without fast-math, and use _rn intrinsics where rounding matters.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }

// Round to nearest even; NaN keeps its top bits with the quiet bit set (the `half` crate).
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u32 lsb = (u >> 16) & 1u;
    return (u16)((u + 0x7fffu + lsb) >> 16);
}

// The GPU's approximate reciprocal: what bitsandbytes scales its 4-bit blocks by.
__device__ __forceinline__ float rcp_approx(float a) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(a));
    return r;
}

// float32 -> E4M3 (e4m3fn): round to nearest even, saturate to +-448, NaN -> 0x7F.
__device__ __forceinline__ u8 e4m3(float x) {
    u32 bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7F;
    u8 sign = (u8)((bits >> 24) & 0x80u);
    u32 b = bits & 0x7fffffffu;
    if (b >= 0x3c800000u) {  // |x| >= 2^-6: normal
        int exp = (int)(b >> 23) - 127;
        u32 man = b & 0x7fffffu;
        u32 m3 = man >> 20;
        u32 rem = man & 0xfffffu;
        if (rem > 0x80000u || (rem == 0x80000u && (m3 & 1u))) m3++;
        if (m3 == 8u) { m3 = 0u; exp++; }
        int e = exp + 7;
        if (e > 15 || (e == 15 && m3 == 7u)) return sign | 0x7E;
        return sign | (u8)(e << 3) | (u8)m3;
    }
    float m = __fmul_rn(__uint_as_float(b), 512.0f);  // exact: multiples of 2^-9
    return sign | (u8)rintf(m);
}

__device__ __forceinline__ float e4m3_to_f32(u8 q) {
    u32 exp = (q >> 3) & 0xFu, man = q & 7u;
    if (exp == 15u && man == 7u) return __uint_as_float(0x7fc00000u);
    float v = exp == 0u ? __fmul_rn((float)man, 0.001953125f)
                        : __uint_as_float(((exp + 120u) << 23) | (man << 20));
    return (q & 0x80) ? -v : v;
}

// float32 -> E2M1 code: round to nearest even, saturate at 6, NaN -> 0, sign in bit 3.
__device__ __forceinline__ u8 e2m1(float x) {
    const float t[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
    float a = fabsf(x);
    u8 code = 0;
    #pragma unroll
    for (int k = 0; k < 7; k++) {
        code += (a > t[k]) ? 1 : 0;
        if (a == t[k] && (k & 1)) code += 1;
    }
    return (x < 0.0f && code != 0) ? (u8)(code | 8) : code;
}

// ModelOpt's NVFP4 element code: a negative value keeps its sign bit even when its
// magnitude rounds to zero (quant::fp4::e2m1_signed).
__device__ __forceinline__ u8 e2m1_signed(float x) {
    u8 code = e2m1(x) & 7;
    return x < 0.0f ? (u8)(code | 8) : code;
}

__device__ __forceinline__ float e2m1_to_f32(u8 c) {
    const float v[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float r = v[c & 7];
    return (c & 8) ? -r : r;
}

// bitsandbytes 4-bit code of y (already scaled into [-1, 1]).
// kind: 0 = NF4 (code = number of midpoints exceeded), 1 = bnb FP4 (decision tree).
__device__ __forceinline__ u8 bnb4_code(int kind, float y, const float (&mids)[15]) {
    if (kind == 0) {
        // Binary search over the 15 sorted midpoints with selects (no dynamic register
        // indexing, no divergence): the count of midpoints below y, NaN -> 0.
        bool b3 = y > mids[7];
        bool b2 = y > (b3 ? mids[11] : mids[3]);
        float t1 = b3 ? (b2 ? mids[13] : mids[9]) : (b2 ? mids[5] : mids[1]);
        bool b1 = y > t1;
        float t0 = b3 ? (b2 ? (b1 ? mids[14] : mids[12]) : (b1 ? mids[10] : mids[8]))
                      : (b2 ? (b1 ? mids[6] : mids[4]) : (b1 ? mids[2] : mids[0]));
        bool b0 = y > t0;
        return (u8)((b3 ? 8 : 0) | (b2 ? 4 : 0) | (b1 ? 2 : 0) | (b0 ? 1 : 0));
    }
    u8 sign = y < 0.0f ? 8 : 0;
    float a = fabsf(y);
    u8 m;
    if (a > 0.29166667f) {
        if (a > 0.583333f) m = a > 0.8333333f ? 3 : 2;
        else m = a > 0.4166667f ? 5 : 4;
    } else if (a > 0.0859375f) {
        m = a > 0.20833333f ? 7 : 6;
    } else {
        m = a > 0.00260417f ? 1 : 0;
    }
    return sign | m;
}

// max(|x|) over a warp-aligned group of `width` lanes (a power of two <= 32).
__device__ __forceinline__ float group_max(float v, int width) {
    for (int o = width / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o, width));
    return v;
}

// Eight bf16 values starting at element i (zero past n), as floats.
__device__ __forceinline__ void load8(const u16* x, i64 i, i64 n, float* v) {
    if (i + 8 <= n) {
        uint4 q = *reinterpret_cast<const uint4*>(x + i);
        u32 w[4] = {q.x, q.y, q.z, q.w};
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            v[2 * k] = bf16_to_f32((u16)(w[k] & 0xffffu));
            v[2 * k + 1] = bf16_to_f32((u16)(w[k] >> 16));
        }
    } else {
        #pragma unroll
        for (int k = 0; k < 8; k++) v[k] = (i + k < n) ? bf16_to_f32(x[i + k]) : 0.0f;
    }
}

// q = a / b, r = a % b for non-negative a, b: 32-bit when both fit (64-bit division is
// emulated on the GPU and costs tens of instructions).
__device__ __forceinline__ void divmod(i64 a, i64 b, i64& q, i64& r) {
    if (a < 0x7fffffffLL && b < 0x7fffffffLL) {
        unsigned ua = (unsigned)a, ub = (unsigned)b;
        q = ua / ub;
        r = ua - (unsigned)q * ub;
    } else {
        q = a / b;
        r = a - q * b;
    }
}

// Version-2 kernels ("v2": the default unless WMAP_KERNELS=v1) work in tiles of
// TILE_UNITS units of 8 elements per 256-thread CTA: unit u of a tile is at
// j * 256 + threadIdx.x (j < UNITS_PER_THREAD), so every load of a warp is 512
// contiguous bytes and each thread has several 16-byte loads in flight before first use.
#define V2_THREADS 256

// Streaming 16-byte load (read once: evict first).
__device__ __forceinline__ uint4 load16_stream(const u16* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }

// The low and high bf16 of a 32-bit word, as floats.
__device__ __forceinline__ float bf16_lo(u32 w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(u32 w) { return __uint_as_float(w & 0xffff0000u); }

// Two floats to packed bf16 (a in the low half), round to nearest even, in one
// instruction. Equals f32_to_bf16 on every non-NaN input; callers keep NaN away.
__device__ __forceinline__ u32 bf16x2_rn(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Eight bf16 (one 16-byte load) as floats, element order.
__device__ __forceinline__ void unpack8_bf16(uint4 q, float (&v)[8]) {
    u32 w[4] = {q.x, q.y, q.z, q.w};
    #pragma unroll
    for (int k = 0; k < 4; k++) {
        v[2 * k] = bf16_lo(w[k]);
        v[2 * k + 1] = bf16_hi(w[k]);
    }
}
