#!/usr/bin/env python3
"""Measures the GPU's reciprocal instructions on every bf16 mantissa (and a few
exponents), to pin down which reciprocal bitsandbytes' 4-bit quantizer uses.
Writes JSON: {instr: [f32 bits for inputs 1 + m/128, m = 0..127], ...}."""
import json
import sys

import cupy as cp

SRC = r'''
extern "C" __global__ void probe(const float* x, unsigned* approx, unsigned* ieee, unsigned* fdiv, unsigned* full, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i], r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
    approx[i] = __float_as_uint(r);
    asm("rcp.rn.f32 %0, %1;" : "=f"(r) : "f"(v));
    ieee[i] = __float_as_uint(r);
    asm("div.approx.f32 %0, %1, %2;" : "=f"(r) : "f"(1.0f), "f"(v));
    fdiv[i] = __float_as_uint(r);
    asm("div.full.f32 %0, %1, %2;" : "=f"(r) : "f"(1.0f), "f"(v));
    full[i] = __float_as_uint(r);
}
'''
k = cp.RawKernel(SRC, "probe")
xs = []
for e in (-8, -1, 0, 1, 5):
    xs += [float((1 + m / 128) * 2.0 ** e) for m in range(128)]
x = cp.asarray(xs, dtype=cp.float32)
outs = [cp.zeros(len(xs), dtype=cp.uint32) for _ in range(4)]
k(((len(xs) + 127) // 128,), (128,), (x, *outs, cp.int32(len(xs))))
names = ["rcp.approx.ftz", "rcp.rn", "div.approx", "div.full"]
res = {n: [int(v) for v in o.get()] for n, o in zip(names, outs)}
res["inputs"] = xs
json.dump(res, open(sys.argv[1], "w"))
for n in names:
    diff = sum(1 for a, b in zip(res[n], res["rcp.rn"]) if a != b)
    print(f"{n:<16} differs from rcp.rn on {diff} of {len(xs)} inputs")
