#!/usr/bin/env python3
"""Regenerates tests/fixtures/golden/torch_mean.safetensors: torch's float32 `mean` on the
GPU for inputs of many lengths, which bitsandbytes' double quantization stores as its
`offset` (`absmax.mean()`). `src/quant/torch_mean.rs` replays ATen's order of additions;
`tests/torch_mean.rs` holds it to these values bit for bit.

Usage (from the repository root, on the GPU the values should describe: an H200, torch 2.11):
  python3 scripts/make_mean_goldens.py [OUT]

The inputs are not stored: each is a stream of 32-bit integer hashes turned straight into
float bit patterns (`hash32`, `f32_values` below; `tests/common/hashgen.rs` is the same
generator in Rust), so the file stays small. Per case k the file holds
  case{k}.meta      int64 [n, kind, seed, shift]   shift: elements past a 16-byte boundary
  case{k}.mean      f32 [1]   torch.mean on the GPU
  case{k}.f64_mean  f32 [1]   the f64 mean rounded once (shows where order matters)
  case{k}.probe     f32 [3]   inputs at 0, n // 2, n - 1 (a check of the generator)
and `__metadata__` records torch, CUDA, the GPU's name, SM count and threads per SM.
"""
import datetime
import sys

import torch
from safetensors.torch import save_file

MASK = 0xFFFFFFFF


def hash32(seed, n, device, start=0):
    """Element i of stream `seed`: multipliers below 2^31 keep int64 products exact."""
    i = torch.arange(start, start + n, dtype=torch.int64, device=device)
    h = (i * 0x27D4EB2D + ((seed * 0x165667B1 + 0x3C6EF372) & MASK)) & MASK
    h = h ^ (h >> 16)
    h = (h * 0x045D9F3B) & MASK
    h = h ^ (h >> 16)
    h = (h * 0x045D9F3B) & MASK
    return h ^ (h >> 16)


def bits_to_f32(bits):
    return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)


def f32_values(kind, seed, n, device):
    """Kind 0, absmax-like: positive, exponents 2^-7..2^0. Kind 1: either sign, 2^-15..2^0."""
    h = hash32(seed, n, device)
    mantissa = h & 0x7FFFFF
    if kind == 0:
        bits = ((120 + ((h >> 23) & 7)) << 23) | mantissa
    else:
        bits = (h & 0x80000000) | ((112 + ((h >> 23) & 15)) << 23) | mantissa
    return bits_to_f32(bits)


def bf16_weights(seed, shape, device):
    """Weight-like bf16: either sign, exponents 2^-17..2^-2, a 7-bit mantissa."""
    n = 1
    for d in shape:
        n *= d
    h = hash32(seed, n, device)
    bits = ((h >> 31) << 15) | ((110 + ((h >> 23) & 15)) << 7) | ((h >> 16) & 0x7F)
    bits = torch.where(bits >= 2**15, bits - 2**16, bits).to(torch.int16)
    return bits.view(torch.bfloat16).reshape(shape)


# Lengths covering every branch of setReduceConfig for one contiguous f32 output: below
# 128 (strided, one CTA), vectorized with block widths 32..512, the first split across
# CTAs (255 * 512 + 1), the SM-count cap (528 CTAs from 528 * 16 * 512 + 1), the count no
# longer exact in f32 (2^24 + 3), and absmax lengths of real layers (numel / 64). The
# largest run only for kind 0 and unshifted: tests/torch_mean.rs regenerates every input
# in a debug build, so the whole file is kept near 40 million values.
LENGTHS = [
    1, 2, 3, 4, 5, 7, 8, 31, 32, 33, 63, 64, 65, 96, 100, 127,
    128, 129, 130, 131, 255, 256, 257, 1000, 2047, 2048, 2049, 4096, 7680, 7681, 8191,
    65536, 130560, 130561, 131072, 229376, 262144, 917504, 1000003, 1048576, 4325377,
]
LARGE = [3 * 2**20, 2**24 + 3]
# (n, shift): slices starting 1..3 floats past an aligned address (the head threads).
SHIFTED = [(129, 1), (130, 2), (131, 3), (1000, 1), (65537, 2), (262147, 3)]


def cases():
    out = []
    for kind in (0, 1):
        for n in LENGTHS + (LARGE if kind == 0 else []):
            out.append((n, kind, 1000 * kind + len(out), 0))
        for n, shift in SHIFTED:
            out.append((n, kind, 1000 * kind + len(out), shift))
    out.append((4325379, 0, len(out), 1))
    return out


def main():
    if not torch.cuda.is_available():
        sys.exit("make_mean_goldens.py: needs a CUDA GPU (the values are torch's GPU mean)")
    out_path = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/golden/torch_mean.safetensors"
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    tensors = {}
    order_matters = 0
    for k, (n, kind, seed, shift) in enumerate(cases()):
        values = f32_values(kind, seed, n, dev)
        if shift:
            base = torch.empty(n + 4, dtype=torch.float32, device=dev)
            base[shift:shift + n] = values
            x = base[shift:shift + n]
        else:
            x = values
        assert x.is_contiguous() and x.data_ptr() % 16 == 4 * shift, (n, shift)
        mean = x.mean().reshape(1).cpu()
        f64_mean = x.double().mean().float().reshape(1).cpu()
        order_matters += int(mean.view(torch.int32).item() != f64_mean.view(torch.int32).item())
        tensors[f"case{k}.meta"] = torch.tensor([n, kind, seed, shift], dtype=torch.int64)
        tensors[f"case{k}.mean"] = mean
        tensors[f"case{k}.f64_mean"] = f64_mean
        tensors[f"case{k}.probe"] = x[[0, n // 2, n - 1]].cpu()
    meta = {
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "gpu": props.name,
        "sm_count": str(props.multi_processor_count),
        "max_threads_per_sm": str(getattr(props, "max_threads_per_multi_processor", 2048)),
        "generator": "scripts/make_mean_goldens.py hash32 / f32_values",
        "date": datetime.date.today().isoformat(),
    }
    save_file(tensors, out_path, metadata=meta)
    print(f"{len(cases())} cases ({order_matters} where torch's order differs from the f64 mean) "
          f"-> {out_path}: {meta}")


if __name__ == "__main__":
    main()
