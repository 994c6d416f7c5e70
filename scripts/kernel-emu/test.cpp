// scripts/kernel-emu/run.sh: the v2 kernels against v1, emulated on the CPU (see run.sh).
#include "shim.h"
#include KERNELS
#include <cstdio>
#include <random>

static const float NF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f,
    0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f,
    0.5626170039176941f, 0.7229568362236023f, 1.0f};
float MIDS[15];
unsigned CELLS[64];

unsigned cell_of(float y) {
    float r = std::fma(y, -15.0f, 12582912.0f);
    return std::min(__float_as_uint(r) - (0x4B400000u - 15u), 30u);
}
void build() {
    for (int i = 0; i < 15; i++) MIDS[i] = (NF4[i] + NF4[i + 1]) / 2.0f;
    for (unsigned c = 0; c < 32; c++) {
        float thr = INFINITY; unsigned base = 0;
        for (int i = 0; i < 15; i++) { if (cell_of(MIDS[i]) == c) thr = MIDS[i]; if (cell_of(MIDS[i]) > c) base++; }
        CELLS[2 * c] = __float_as_uint(thr); CELLS[2 * c + 1] = base;
    }
}
unsigned short bf(float f) { return f32_to_bf16(f); }
std::vector<unsigned short> data(size_t n, unsigned seed, bool special) {
    std::mt19937 g(seed); std::normal_distribution<float> d(0, 1);
    std::vector<unsigned short> x(n);
    const unsigned short sp[] = {0x7fc0, 0xffc0, 0x7f80, 0xff80, 0x0001, 0x8001, 0x007f, 0x8000, 0x43e8, 0x43e0, 0x3f90, 0x3c00, 0x7f7f};
    for (size_t i = 0; i < n; i++) {
        x[i] = bf(d(g));
        if (special) {
            int blk = (i / 64) % 8;
            if (blk == 0) x[i] = 0;
            else if (blk == 1) x[i] = g() & 0x807f;
            else if (blk == 2 && g() % 13 == 0) x[i] = sp[g() % 13];
            else if (blk == 3 && i % 64 == 5) x[i] = 0x7fc0;
            else if (blk == 4 && i % 64 == 9) x[i] = 0xff80;
        }
    }
    return x;
}
int fails = 0;
template <class T> void cmp(const char* what, const std::vector<T>& a, const std::vector<T>& b) {
    for (size_t i = 0; i < a.size(); i++) if (memcmp(&a[i], &b[i], sizeof(T))) {
        printf("FAIL %s at %zu\n", what, i); fails++; return; }
}
void bnb4_case(long n, int bs, int kind, unsigned grid_cap, bool special) {
    auto x = data(n, n * 7 + bs + kind, special);
    long nb = (n + bs - 1) / bs, nbytes = (n + 1) / 2;
    std::vector<unsigned char> p1(nbytes, 0xAA), p2(nbytes, 0x55);
    std::vector<float> a1(nb, -7.0f), a2(nb, -9.0f);
    long ntile = (n + 8191) / 8192;
    unsigned g2 = std::min<long>(ntile, grid_cap);
    launch(g2, 1, [&] { bnb4_quantize_v2(x.data(), p2.data(), a2.data(), n, bs, kind, CELLS); });
    if (bs <= 256) launch((n / 8 + 255) / 256 + 1, 1, [&] { bnb4_quantize_small(x.data(), p1.data(), a1.data(), n, bs, kind, MIDS); });
    char what[128];
    snprintf(what, sizeof what, "quantize n=%ld bs=%d kind=%d grid=%u special=%d", n, bs, kind, g2, special);
    cmp(what, p1, p2); cmp(what, a1, a2);
    // dequantize
    float table[16];
    for (int c = 0; c < 16; c++) table[c] = NF4[c];
    std::vector<unsigned short> o1(n, 1), o2(n, 2);
    long dtile = (n + 16383) / 16384;
    unsigned gd = dtile;  // one CTA per tile
    launch((n / 8 + 255) / 256 + 1, 1, [&] { bnb4_dequantize(p1.data(), a1.data(), o1.data(), n, bs, table); });
    launch(gd, 1, [&] { bnb4_dequantize_v2(p1.data(), a1.data(), o2.data(), n, bs, table); });
    snprintf(what, sizeof what, "dequantize n=%ld bs=%d grid=%u special=%d", n, bs, gd, special);
    cmp(what, o1, o2);
}
void large_case(long n, int bs, bool special) {
    auto x = data(n, n + bs, special);
    long nb = (n + bs - 1) / bs, nbytes = (n + 1) / 2;
    std::vector<unsigned char> p(nbytes, 0);
    std::vector<float> a(nb, 0);
    launch(nb, 1, [&] { bnb4_quantize_large(x.data(), p.data(), a.data(), n, bs, 1, MIDS); }, bs / 8);
    float table[16];
    for (int c = 0; c < 16; c++) table[c] = (c & 8 ? -1.0f : 1.0f) * (float)((c * 5) % 8) / 7.0f;
    std::vector<unsigned short> o1(n, 1), o2(n, 2);
    launch((n / 8 + 255) / 256 + 1, 1, [&] { bnb4_dequantize(p.data(), a.data(), o1.data(), n, bs, table); });
    launch((n + 16383) / 16384, 1, [&] { bnb4_dequantize_v2(p.data(), a.data(), o2.data(), n, bs, table); });
    char what[128];
    snprintf(what, sizeof what, "dequantize n=%ld bs=%d special=%d", n, bs, special);
    cmp(what, o1, o2);
}
void fp8_case(long rows, long cols, bool special) {
    auto x = data(rows * cols, rows + cols, special);
    long bc = (cols + 127) / 128, br = (rows + 127) / 128;
    std::vector<unsigned char> q1(rows * cols, 1), q2(rows * cols, 2);
    std::vector<float> s1(bc * br, 1), s2(bc * br, 2);
    launch(bc, br, [&] { fp8_quantize_blocks(x.data(), rows, cols, q1.data(), s1.data()); });
    launch(bc, br, [&] { fp8_quantize_blocks_v2(x.data(), rows, cols, q2.data(), s2.data()); });
    char what[128];
    snprintf(what, sizeof what, "fp8 %ldx%ld special=%d", rows, cols, special);
    cmp(what, q1, q2); cmp(what, s1, s2);
}
int main(int argc, char**) {
    build();
    bool quick = argc > 1;
    int checks = 0;
    for (bool sp : {false, true}) {
        for (long n : quick ? std::vector<long>{8200L, 40001L, 5 * 16384L + 8} : std::vector<long>{77L, 8192L, 8200L, 16384L, 16392L, 3 * 8192L + 13, 5 * 16384L + 8, 40001L})
            for (int bs : quick ? std::vector<int>{64} : std::vector<int>{32, 64, 128, 256})
                for (int kind : {0, 1})
                    for (unsigned cap : quick ? std::vector<unsigned>{2u} : std::vector<unsigned>{1u, 2u, 3u, 1000u}) { bnb4_case(n, bs, kind, cap, sp); checks++; }
        // Blocks over 256 (bs 512, 2048): quantized by v1's CTA-per-block kernel, then
        // v2's dequantize against v1's.
        for (long n : {20000L, 5 * 16384L + 8})
            for (int bs : {512, 2048}) { large_case(n, bs, sp); checks++; }
        fp8_case(256, 384, sp); fp8_case(130, 136, sp); fp8_case(129, 260, sp); fp8_case(384, 128, sp);
        checks += 4;
    }
    printf("%d cases, %d failures\n", checks, fails);
    return fails != 0;
}
