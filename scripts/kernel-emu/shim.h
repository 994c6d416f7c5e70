// CPU emulation of the CUDA subset the v2 kernels use: one CTA at a time, one OS thread
// per CUDA thread, barriers for __syncthreads and warp shuffles.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>
#define __device__
#define __forceinline__ inline
#define __noinline__
#define __global__
#define __launch_bounds__(...)
#define __shared__ static
struct dim3e { unsigned x = 0, y = 0, z = 0; };
thread_local dim3e threadIdx, blockIdx;
dim3e blockDim, gridDim;
struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
using std::min; using std::max; using std::isfinite;
inline unsigned __vmaxu2(unsigned a, unsigned b) {
    unsigned lo = std::max(a & 0xffff, b & 0xffff), hi = std::max(a >> 16, b >> 16);
    return lo | (hi << 16);
}
inline float emu_rcp(float a) {  // rcp.approx.ftz: subnormal in -> inf, subnormal out -> 0
    unsigned u = __float_as_uint(a);
    if (((u >> 23) & 0xff) == 0) return __uint_as_float((u & 0x80000000u) | 0x7f800000u);
    float r = 1.0f / a;
    unsigned v = __float_as_uint(r);
    if (((v >> 23) & 0xff) == 0) return __uint_as_float(v & 0x80000000u);
    return r;
}
std::barrier<>* cta_bar;
std::barrier<>* warp_bar[8];
float warp_buf[8][32];
unsigned warp_ubuf[8][32];
inline void __syncthreads() { cta_bar->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o, int width) {
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    warp_buf[w][lane] = v;
    warp_bar[w]->arrive_and_wait();
    float r = warp_buf[w][(lane ^ o) & 31];
    (void)width;
    warp_bar[w]->arrive_and_wait();
    return r;
}
inline unsigned __reduce_max_sync(unsigned, unsigned v) {
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    warp_ubuf[w][lane] = v;
    warp_bar[w]->arrive_and_wait();
    unsigned m = 0;
    for (int k = 0; k < 32; k++) m = std::max(m, warp_ubuf[w][k]);
    warp_bar[w]->arrive_and_wait();
    return m;
}
inline void atomicMax(unsigned*, unsigned) {}
// Runs kernel(body) for every CTA of `grid` (x, y) with `threads` (a multiple of 32, at
// most 256) threads.
inline void launch(unsigned gx, unsigned gy, std::function<void()> body, unsigned threads = 256) {
    gridDim = {gx, gy, 1}; blockDim = {threads, 1, 1};
    for (unsigned by = 0; by < gy; by++)
        for (unsigned bx = 0; bx < gx; bx++) {
            std::barrier<> cb(threads);
            cta_bar = &cb;
            for (int w = 0; w < 8; w++) warp_bar[w] = new std::barrier<>(32);
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < threads; t++)
                ts.emplace_back([=] { threadIdx = {t, 0, 0}; blockIdx = {bx, by, 0}; body(); });
            for (auto& t : ts) t.join();
            for (int w = 0; w < 8; w++) delete warp_bar[w];
        }
}
