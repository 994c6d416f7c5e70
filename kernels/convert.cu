// Loader helpers: conversion to bf16, and the strided copy that fuses along a dim > 0.

// IEEE half -> float (exact), written out to need no CUDA headers.
__device__ __forceinline__ float f16_to_f32(u16 h) {
    u32 sign = ((u32)h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (exp == 0x1Fu) return __uint_as_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0u) {
        float v = __fmul_rn((float)man, 5.9604644775390625e-8f);  // man * 2^-24, exact
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// src_dtype: 0 = f32, 1 = f16, 2 = bf16 (a copy). Round to nearest even.
extern "C" __global__ void to_bf16(const u8* src, int src_dtype, u16* out, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (src_dtype == 0) out[i] = f32_to_bf16(((const float*)src)[i]);
    else if (src_dtype == 1) out[i] = f32_to_bf16(f16_to_f32(((const u16*)src)[i]));
    else out[i] = ((const u16*)src)[i];
}

// Copies a part [outer, rows, inner] into the fused tensor [outer, total_rows, inner] at
// row offset `at`: concatenation along dim d, with `inner` the elements past d (bytes es).
extern "C" __global__ void fuse_copy(const u8* part, u8* out, i64 outer, i64 rows, i64 total_rows, i64 at,
                                     i64 inner_bytes) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 row_bytes = rows * inner_bytes;
    if (i >= outer * row_bytes) return;
    i64 o = i / row_bytes, k = i % row_bytes;
    out[o * total_rows * inner_bytes + at * inner_bytes + k] = part[i];
}

// A stand-in for a layer's compute in the offload benchmark: spins for `cycles` clocks.
extern "C" __global__ void spin(i64 cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) {
    }
}
