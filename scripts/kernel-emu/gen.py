import re
import os, sys
k = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../kernels/")
src = open(k + "common.cuh").read().replace("#pragma once", "")
src += """
// The hardware conversion as cuda_fp8.hpp's host emulation describes it: NaN -> 0x7F
// with the sign bit or'ed in; everything else as e4m3() (RNE, saturating).
inline unsigned short emu_e4m3x2(float hi, float lo) {
    auto one = [](float v) -> unsigned {
        unsigned b = __float_as_uint(v);
        if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7Fu | ((b >> 24) & 0x80u);
        return e4m3(v);
    };
    return (unsigned short)((one(hi) << 8) | one(lo));
}
"""
for f in ["bnb4.cu", "bnb4_v2.cu", "fp8.cu"]:
    src += "\n" + open(k + f).read()
subs = [
    (r'asm\("rcp\.approx\.ftz\.f32 %0, %1;" : "=f"\(r\) : "f"\(a\)\);', 'r = emu_rcp(a);'),
    (r'asm\("cvt\.rn\.bf16x2\.f32 %0, %1, %2;" : "=r"\(r\) : "f"\(hi\), "f"\(lo\)\);',
     'r = (u32)f32_to_bf16(lo) | ((u32)f32_to_bf16(hi) << 16);'),
    (r'asm\("set\.gt\.u32\.f32 %0, %1, %2;" : "=r"\(r\) : "f"\(a\), "f"\(b\)\);', 'r = (a > b) ? 0xffffffffu : 0u;'),
]
for a, b in subs:
    src, n = re.subn(a, b, src)
    assert n == 1, (a, n)
# cvt e4m3x2: asm("cvt..." : "=h"(p0) : "f"(A), "f"(B)); over two lines
src, n = re.subn(r'asm\("cvt\.rn\.satfinite\.e4m3x2\.f32 %0, %1, %2;"\s*:\s*"=h"\((\w+)\)\s*:\s*"f"\((.*?)\), "f"\((.*?)\)\);',
                 r'\1 = emu_e4m3x2(\2, \3);', src, flags=re.S)
assert n == 2, n
assert "asm(" not in src, src[src.index("asm("):src.index("asm(")+200]
open(sys.argv[1], "w").write(src)
