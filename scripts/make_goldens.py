#!/usr/bin/env python3
"""Regenerates the quantization goldens in tests/fixtures/golden/ with the reference tools
themselves, on a CUDA machine (bitsandbytes' 4-bit kernels need one):

  bnb_4bit.safetensors  bitsandbytes NF4, FP4 and NF4 double quant (packed codes, absmax,
                        the nested quant state, dequantized values), double quant of two
                        layer-sized hashed weights (offset, nested state), and torch's
                        E4M3 cast.
  scales.safetensors    fine-grained FP8 (128x128 blocks) quantized and dequantized by
                        transformers' own `Fp8Quantize` / `Fp8Dequantize` ops, and NVFP4
                        quantized and dequantized by ModelOpt's `NVFP4QTensor` (imported from
                        the nvidia-modelopt wheel when it imports; otherwise a line-by-line
                        transcription of its `quantize`/`dequantize`, and the metadata says so).

Usage (from the repository root; bitsandbytes' part needs a GPU, the rest runs anywhere
with torch 2.11, transformers 5.17 and nvidia-modelopt 0.47 installed):
  PYTHONPATH=.gpu/bnb python3 scripts/make_goldens.py OUT_DIR
Every input comes from torch.Generator seeds below; the versions used are recorded in each
file's `__metadata__`. The tests (tests/quant.rs) compare wmap's CPU reference with these bytes.
"""
import json
import sys
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

SEED = 20261201
E4M3_MAX = 448.0
# bitsandbytes' 4-bit kernels need CUDA; the FP8 and NVFP4 references are plain torch and give
# the same bytes on either device (IEEE float32 division, products and round-to-nearest-even
# casts), so they run on the CPU where no GPU is lent.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rng(offset):
    return torch.Generator().manual_seed(SEED + offset)


def randn(shape, std, offset):
    return (torch.randn(shape, generator=rng(offset)) * std).to(torch.bfloat16)


# ---------------------------------------------------------------- bitsandbytes + torch E4M3
BNB_CASES = [
    # (shape, blocksize, std, special)
    ((128, 64), 64, 0.3, None),
    ((64, 96), 64, 1.5, "zero_first_block"),
    ((256, 128), 128, 2.0, None),
    ((32, 512), 256, 3.0, None),
    ((2000,), 64, 4.0, None),
    ((77,), 64, 5.0, None),
    ((64, 64), 32, 6.0, "outliers"),
]


# Double quant at the scale of real layers, where the offset (torch's float32 GPU mean of
# 262144 or 49152 absmax values) gets its last bit from torch's order of additions. The
# weights are hashed (make_mean_goldens.bf16_weights; tests/common/hashgen.rs in Rust),
# not stored; the nested codes are stored for the first case only (256 KiB).
DQ_AT_SCALE = [((4096, 4096), 7001), ((2048, 1536), 7002)]


def dq_at_scale(F, out):
    from make_mean_goldens import bf16_weights

    for k, (shape, seed) in enumerate(DQ_AT_SCALE):
        w = bf16_weights(seed, shape, "cuda")
        packed, st = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        out[f"dqbig{k}.shape"] = torch.tensor(shape, dtype=torch.int64)
        out[f"dqbig{k}.seed"] = torch.tensor([seed], dtype=torch.int64)
        out[f"dqbig{k}.offset"] = st.offset.float().reshape(1).cpu()
        out[f"dqbig{k}.state2_absmax"] = st.state2.absmax.float().cpu()
        if k == 0:
            out[f"dqbig{k}.absmax_q"] = st.absmax.cpu()


def bnb_goldens():
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    out = {}
    for i, (shape, bs, std, special) in enumerate(BNB_CASES):
        x = randn(shape, std, i)
        flat = x.view(-1)
        if special == "zero_first_block":
            flat[:64] = 0
        if special == "outliers":
            flat[2::97] = torch.tensor(-17.625, dtype=torch.bfloat16)
            flat[5::89] = torch.tensor(25.75, dtype=torch.bfloat16)
        xc = x.cuda()
        for qt in ("nf4", "fp4"):
            packed, st = F.quantize_4bit(xc, blocksize=bs, quant_type=qt, compress_statistics=False)
            out[f"case{i}.{qt}.input"] = x.clone()  # one tensor per key: safetensors refuses shared storage
            out[f"case{i}.{qt}.blocksize"] = torch.tensor([bs], dtype=torch.int64)
            out[f"case{i}.{qt}.packed"] = packed.cpu()
            out[f"case{i}.{qt}.absmax"] = st.absmax.float().cpu()
            out[f"case{i}.{qt}.dequant"] = F.dequantize_4bit(packed, st).to(torch.bfloat16).cpu()
        packed, st = F.quantize_4bit(xc, blocksize=bs, quant_type="nf4", compress_statistics=True)
        out[f"case{i}.nf4dq.packed"] = packed.cpu()
        out[f"case{i}.nf4dq.absmax_q"] = st.absmax.cpu()
        out[f"case{i}.nf4dq.offset"] = st.offset.float().reshape(1).cpu()
        out[f"case{i}.nf4dq.state2_absmax"] = st.state2.absmax.float().cpu()
        out[f"case{i}.nf4dq.state2_code"] = st.state2.code.float().cpu()
        out[f"case{i}.nf4dq.dequant"] = F.dequantize_4bit(packed, st).to(torch.bfloat16).cpu()
    dq_at_scale(F, out)
    x = randn((256, 64), 4.0, 100)
    out["fp8.input"] = x
    # float32 product (no bf16 rounding), clamp, then torch's round-to-nearest-even cast.
    y = (x.float() * 100.0).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    out["fp8.e4m3_of_clamped_x_times_100"] = y.view(torch.uint8)
    meta = {"bitsandbytes": bnb.__version__, "torch": torch.__version__, "seed": str(SEED)}
    return {k: v.contiguous() for k, v in out.items()}, meta


# ---------------------------------------------------------------- fine-grained FP8 (transformers)
FP8_CASES = [
    # (shape, std, special); transformers quantizes only shapes that tile into 128x128.
    ((256, 384), 0.02, None),
    ((128, 128), 1.0, "zero_block"),
    ((384, 256), 0.5, "outliers"),
    ((2, 128, 256), 0.1, None),  # stacked experts: scales [E, rows/128, cols/128]
]


def fp8_dequantize(op, q, s):
    """transformers' dequantization of one (weight, weight_scale_inv) pair to bf16."""
    if hasattr(op, "_dequantize_one"):
        return op._dequantize_one(q, s, output_dtype=torch.bfloat16)
    return op.convert({"weight$": [q], "weight_scale_inv": [s]}, full_layer_name="w")["w"]


def fp8_goldens():
    import transformers
    from transformers import FineGrainedFP8Config
    from transformers.integrations import finegrained_fp8 as fg

    hq = SimpleNamespace(quantization_config=FineGrainedFP8Config(weight_block_size=[128, 128]))
    quantize, dequantize = fg.Fp8Quantize(hq), fg.Fp8Dequantize(hq)
    out = {}
    for i, (shape, std, special) in enumerate(FP8_CASES):
        x = randn(shape, std, 200 + i)
        if special == "zero_block":
            x[:128, :128] = 0
            x[0, 0] = 0  # all of the only block: scale falls back to 1
        if special == "outliers":
            x.view(-1)[7::131] = torch.tensor(300.0, dtype=torch.bfloat16)
        res = quantize.convert({"w.weight": [x.to(DEVICE)]})
        q, s = res["w.weight"], res["w.weight_scale_inv"]
        assert q.dtype == torch.float8_e4m3fn, q.dtype
        deq = fp8_dequantize(dequantize, q, s)
        out[f"fp8.case{i}.input"] = x
        out[f"fp8.case{i}.weight"] = q.cpu()
        out[f"fp8.case{i}.weight_scale_inv"] = s.float().cpu()
        out[f"fp8.case{i}.dequant"] = deq.to(torch.bfloat16).cpu()
    return out, {"transformers": transformers.__version__, "fp8_reference": fg.__file__.split("site-packages/")[-1]}


# ---------------------------------------------------------------- NVFP4 (ModelOpt)
NVFP4_CASES = [
    ((64, 128), 0.02, None),
    ((32, 48), 1.0, "zero_block"),
    ((48, 64), 0.5, "tiny_blocks"),  # blocks far below the tensor amax: scale clamps to 2^-9
    ((16, 256), 2.0, "outliers"),
]


class _Transcribed:
    """modelopt/torch/quantization/qtensor/nvfp4_tensor.py (nvidia-modelopt 0.47.0), the
    dynamic path: `get_weights_scaling_factor_2`, `get_weights_scaling_factor`,
    `_cast_per_block_scale_to_fp8`, `_cast_fp4`, `quantize` and `dequantize`."""

    bounds = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5])
    values = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6])

    @classmethod
    def quantize(cls, x, block):
        ws2 = x.abs().amax().float() / (6.0 * E4M3_MAX)
        blocks = x.view(*x.shape[:-1], -1, block)
        scale = blocks.abs().amax(dim=-1).float() / (6.0 * ws2)
        scale[scale == 0] = 1.0
        scale = scale.clamp(min=2**-9, max=E4M3_MAX).to(torch.float8_e4m3fn)
        scaled = (blocks / (scale.to(torch.float32) * ws2).unsqueeze(-1)).view(x.shape)
        sign = (scaled < 0).to(torch.uint8)
        a = scaled.abs()
        b = cls.bounds.to(a.device)
        code = torch.searchsorted(b, a, out_int32=True).to(torch.uint8)
        code += torch.any(a.unsqueeze(-1) == b[[1, 3, 5]], dim=-1).to(torch.uint8)
        code = (sign << 3) + code
        return (code[..., 1::2] << 4) | code[..., 0::2], scale, ws2

    @classmethod
    def dequantize(cls, packed, scale, ws2, block, dtype):
        codes = torch.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=torch.long, device=packed.device)
        codes[..., 1::2] = packed >> 4
        codes[..., 0::2] = packed & 0x0F
        vals = cls.values.to(packed.device)[codes]
        per_block = scale.to(torch.float32) * ws2
        out = vals.view(*vals.shape[:-1], -1, block) * per_block.unsqueeze(-1)
        return out.reshape(vals.shape).to(dtype)


def modelopt_nvfp4():
    """ModelOpt's own class when the wheel imports here, else the transcription."""
    try:
        import modelopt
        from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

        def quantize(x, block):
            qt, scale, ws2 = NVFP4QTensor.quantize(x, block)
            return qt._quantized_data, scale, ws2

        def dequantize(packed, scale, ws2, block, dtype):
            qt = NVFP4QTensor(torch.Size((*packed.shape[:-1], packed.shape[-1] * 2)), dtype, packed)
            return qt.dequantize(dtype=dtype, scale=scale, double_scale=ws2, block_sizes={-1: block})

        return quantize, dequantize, f"nvidia-modelopt {modelopt.__version__} (imported)"
    except Exception as e:  # noqa: BLE001 - any import failure falls back, and is recorded
        print(f"modelopt not importable ({type(e).__name__}: {e}); using the transcription", file=sys.stderr)
        return _Transcribed.quantize, _Transcribed.dequantize, "transcription of nvidia-modelopt 0.47.0 nvfp4_tensor.py"


def nvfp4_goldens():
    quantize, dequantize, which = modelopt_nvfp4()
    out = {}
    for i, (shape, std, special) in enumerate(NVFP4_CASES):
        x = randn(shape, std, 300 + i)
        if special == "zero_block":
            x[0, :16] = 0
        if special == "tiny_blocks":
            x[1, :16] = torch.tensor(1e-7, dtype=torch.bfloat16)
            x[2, 16:32] = -x[2, 16:32].abs() * 1e-6
            x[3, 0] = torch.tensor(6000.0, dtype=torch.bfloat16)
        if special == "outliers":
            x.view(-1)[3::37] = torch.tensor(-90.0, dtype=torch.bfloat16)
        packed, scale, ws2 = quantize(x.to(DEVICE), 16)
        deq = dequantize(packed, scale, ws2, 16, torch.bfloat16)
        out[f"nvfp4.case{i}.input"] = x
        out[f"nvfp4.case{i}.weight"] = packed.cpu()
        out[f"nvfp4.case{i}.weight_scale"] = scale.cpu()
        out[f"nvfp4.case{i}.weight_scale_2"] = ws2.float().reshape(()).cpu()
        out[f"nvfp4.case{i}.dequant"] = deq.to(torch.bfloat16).cpu()
    return out, {"nvfp4_reference": which}


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/golden"
    if DEVICE == "cuda":
        tensors, meta = bnb_goldens()
        save_file(tensors, f"{out_dir}/bnb_4bit.safetensors", metadata=meta)
    else:
        print("no CUDA device: bnb_4bit.safetensors left as it is", file=sys.stderr)
    fp8, m1 = fp8_goldens()
    nv, m2 = nvfp4_goldens()
    meta = {"torch": torch.__version__, "seed": str(SEED), **m1, **m2}
    save_file({k: v.contiguous() for k, v in {**fp8, **nv}.items()}, f"{out_dir}/scales.safetensors", metadata=meta)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
