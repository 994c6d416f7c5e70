// Pre-quantized sources as checkpoints store them (FP8 blocks, bitsandbytes 4-bit, MXFP4,
// NVFP4), dequantized to bf16 exactly as the host does (src/load/prequant.rs): one f32
// product per element, then round to nearest even. One thread per output element; the
// output may start at any element of a target (a part of a fuse), so stores are single
// u16s. Every index is 64-bit.

// x86's multiply, NaN included: a NaN operand comes out quieted (the first one when both
// are), an invalid product (0 * inf) is the negative default NaN. The GPU would return
// its canonical NaN instead, and the bf16 bytes would differ from the host's.
__device__ __forceinline__ float host_mul(float a, float b) {
    if (isnan(a)) return __uint_as_float(__float_as_uint(a) | 0x400000u);
    if (isnan(b)) return __uint_as_float(__float_as_uint(b) | 0x400000u);
    float r = __fmul_rn(a, b);
    return isnan(r) ? __uint_as_float(0xffc00000u) : r;
}

// x86's addition, NaN as host_mul (inf - inf is the negative default NaN).
__device__ __forceinline__ float host_add(float a, float b) {
    if (isnan(a)) return __uint_as_float(__float_as_uint(a) | 0x400000u);
    if (isnan(b)) return __uint_as_float(__float_as_uint(b) | 0x400000u);
    float r = __fadd_rn(a, b);
    return isnan(r) ? __uint_as_float(0xffc00000u) : r;
}

// E4M3 as the host's table reads it: the NaN codes keep their sign.
__device__ __forceinline__ float e4m3_signed(u8 q) {
    float v = e4m3_to_f32(q);
    return isnan(v) ? __uint_as_float(__float_as_uint(v) | ((u32)(q & 0x80) << 24)) : v;
}

// Fine-grained FP8: out = bf16(e4m3(q) * scale of its (br x bc) tile), scales f32 or bf16
// (`scales_bf16`), row-major [ceil(rows/br), ceil(cols/bc)].
extern "C" __global__ void fp8_blocks_dequant(const u8* q, const u8* scales, int scales_bf16, u16* out, i64 rows,
                                              i64 cols, i64 br, i64 bc) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * cols) return;
    i64 r, c;
    divmod(i, cols, r, c);
    i64 g = (r / br) * ((cols + bc - 1) / bc) + c / bc;
    float s = scales_bf16 ? bf16_to_f32(((const u16*)scales)[g]) : ((const float*)scales)[g];
    out[i] = f32_to_bf16(host_mul(e4m3_signed(q[i]), s));
}

// bitsandbytes 4-bit: out = bf16(table[code] * absmax[i / bs]), first element in the high
// nibble. Any block size (the host takes any).
extern "C" __global__ void bnb4_stored_dequant(const u8* packed, const float* absmax, u16* out, i64 n, i64 bs,
                                               const float* table) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    u8 byte = packed[i / 2];
    u8 c = (i & 1) ? (byte & 0xF) : (byte >> 4);
    i64 b, within;
    divmod(i, bs, b, within);
    out[i] = f32_to_bf16(host_mul(table[c], absmax[b]));
}

// Double quant undone with the stored nested block size: absmax = map[code] * nested[i / nbs]
// + offset, two roundings (quant::bnb4::undo_double).
extern "C" __global__ void bnb4_stored_absmax(const u8* codes, const float* nested, float offset, i64 nbs,
                                              const float* map, float* absmax, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    absmax[i] = host_add(host_mul(map[codes[i]], nested[i / nbs]), offset);
}

// E2M1 codes packed two a byte (element 2i in the low nibble), rows of `cols`.
// mode 0: NVFP4, e2m1 * (e4m3 scale * tensor scale) with code 8 read as +0 (ModelOpt);
// mode 1: MXFP4, e2m1 * 2^(e - 127) (transformers' convert_moe_packed_tensors).
extern "C" __global__ void fp4_stored_dequant(const u8* packed, const u8* scales, float tensor_scale, u16* out,
                                              i64 rows, i64 cols, int mode) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * cols) return;
    i64 r, c;
    divmod(i, cols, r, c);
    u8 byte = packed[r * ((cols + 1) / 2) + c / 2];
    u8 code = (c & 1) ? (byte >> 4) : (byte & 0xF);
    float v;
    if (mode == 0) {
        float s = e4m3_signed(scales[r * ((cols + 15) / 16) + c / 16]);
        v = host_mul(e2m1_to_f32(code & 7 ? code : 0), host_mul(s, tensor_scale));
    } else {
        float s = ldexpf(1.0f, (int)scales[r * ((cols + 31) / 32) + c / 32] - 127);
        v = host_mul(e2m1_to_f32(code), s);
    }
    out[i] = f32_to_bf16(v);
}

// Swaps two axes of a bf16 tensor seen as [outer, da, mid, db, inner]:
// out[o, j, m, i, k] = in[o, i, m, j, k]. Any two axes of any rank fold into this.
extern "C" __global__ void swap_axes_bf16(const u16* in, u16* out, i64 outer, i64 da, i64 mid, i64 db,
                                          i64 inner) {
    i64 n = outer * da * mid * db * inner;
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    // t indexes the output [outer, db, mid, da, inner] (divmod's outputs never alias
    // its inputs).
    i64 r0, k, r1, i, r2, m, o, j;
    divmod(t, inner, r0, k);
    divmod(r0, da, r1, i);
    divmod(r1, mid, r2, m);
    divmod(r2, db, o, j);
    out[t] = in[(((o * da + i) * mid + m) * db + j) * inner + k];
}
