// FP4 E2M1 with block scales along rows: NVFP4 (16 elements, E4M3 scale, f32 tensor
// scale) and MXFP4 (32 elements, E8M0 scale, OCP rule). Element 2i in the low nibble.
// One thread per block of a row; a partial last block is zero-padded.

extern "C" __global__ void nvfp4_quantize(const u16* x, i64 rows, i64 cols, const u32* amax_bits, u8* packed,
                                          u8* scales, float* tensor_scale) {
    i64 bpr = (cols + 15) / 16;
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    float amax = __uint_as_float(*amax_bits);
    float ws2 = amax == 0.0f ? 1.0f : __fdiv_rn(amax, 2688.0f);
    if (t == 0) *tensor_scale = ws2;
    if (t >= rows * bpr) return;
    i64 r, b;
    divmod(t, bpr, r, b);
    i64 c0 = b * 16;
    float v[16];
    float m = 0.0f;
    #pragma unroll
    for (int k = 0; k < 16; k++) {
        v[k] = c0 + k < cols ? bf16_to_f32(x[r * cols + c0 + k]) : 0.0f;
        m = fmaxf(m, fabsf(v[k]));
    }
    // ModelOpt's block scale: 1.0 where zero, clamped to [2^-9, 448] before the cast.
    float sf = __fdiv_rn(m, __fmul_rn(6.0f, ws2));
    if (sf == 0.0f) sf = 1.0f;
    u8 s = e4m3(fminf(fmaxf(sf, 0.001953125f), 448.0f));
    scales[r * bpr + b] = s;
    float denom = __fmul_rn(e4m3_to_f32(s), ws2);
    i64 ppr = (cols + 1) / 2;
    for (int k = 0; k < 16 && c0 + k < cols; k += 2) {
        u8 lo = e2m1_signed(__fdiv_rn(v[k], denom));
        u8 hi = c0 + k + 1 < cols ? e2m1_signed(__fdiv_rn(v[k + 1], denom)) : 0;
        packed[r * ppr + (c0 + k) / 2] = lo | (u8)(hi << 4);
    }
}

__device__ __forceinline__ u8 mx_scale(float amax) {
    if (!isfinite(amax)) return 254;
    if (amax == 0.0f) return 0;
    u32 bits = __float_as_uint(amax);
    int exp = (int)((bits >> 23) & 0xFF);
    int fl = exp == 0 ? -127 - ((int)__clz(bits & 0x7fffffu) - 9) : exp - 127;
    int e = fl - 2 + 127;
    return (u8)(e < 0 ? 0 : e > 254 ? 254 : e);
}

extern "C" __global__ void mxfp4_quantize(const u16* x, i64 rows, i64 cols, u8* packed, u8* scales) {
    i64 bpr = (cols + 31) / 32;
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= rows * bpr) return;
    i64 r, b;
    divmod(t, bpr, r, b);
    i64 c0 = b * 32;
    float v[32];
    float m = 0.0f;
    #pragma unroll
    for (int k = 0; k < 32; k++) {
        v[k] = c0 + k < cols ? bf16_to_f32(x[r * cols + c0 + k]) : 0.0f;
        m = fmaxf(m, fabsf(v[k]));
    }
    u8 e = mx_scale(m);
    scales[r * bpr + b] = e;
    float scale = ldexpf(1.0f, (int)e - 127);
    i64 ppr = (cols + 1) / 2;
    for (int k = 0; k < 32 && c0 + k < cols; k += 2) {
        u8 lo = e2m1(__fdiv_rn(v[k], scale));
        u8 hi = c0 + k + 1 < cols ? e2m1(__fdiv_rn(v[k + 1], scale)) : 0;
        packed[r * ppr + (c0 + k) / 2] = lo | (u8)(hi << 4);
    }
}

// mode 0: NVFP4 (e2m1 * (e4m3 scale * tensor scale), ModelOpt's order); mode 1: MXFP4 (e2m1 * 2^(e-127)).
extern "C" __global__ void fp4_dequantize(const u8* packed, const u8* scales, const float* tensor_scale, u16* out,
                                          i64 rows, i64 cols, int mode) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * cols) return;
    i64 r, c;
    divmod(i, cols, r, c);
    u8 byte = packed[r * ((cols + 1) / 2) + c / 2];
    u8 code = (c & 1) ? (byte >> 4) : (byte & 0xF);
    float v;
    if (mode == 0) {
        float s = e4m3_to_f32(scales[r * ((cols + 15) / 16) + c / 16]);
        // ModelOpt's table reads negative zero (code 8) as +0.0.
        v = __fmul_rn(e2m1_to_f32(code & 7 ? code : 0), __fmul_rn(s, *tensor_scale));
    } else {
        v = __fmul_rn(e2m1_to_f32(code), ldexpf(1.0f, (int)scales[r * ((cols + 31) / 32) + c / 32] - 127));
    }
    out[i] = f32_to_bf16(v);
}
