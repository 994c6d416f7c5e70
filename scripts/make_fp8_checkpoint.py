#!/usr/bin/env python3
"""Writes tiny fine-grained FP8 releases, quantized by transformers' own `Fp8Quantize`, and
the golden dequantization of each quantized linear by transformers' own `Fp8Dequantize`:

  tests/fixtures/hf/qwen3_fp8/{config.json, model.safetensors}
      every linear of the decoder layers stored as `weight` F8_E4M3 + `weight_scale_inv` F32
      `[rows/128, cols/128]`; embeddings, norms and `lm_head` in BF16 (as the hub's
      Qwen3-*-FP8 releases), and a `quantization_config` like theirs.
  tests/fixtures/golden/qwen3_fp8_dequant.safetensors
      for each quantized checkpoint tensor `X.weight`, its BF16 dequantization under the
      same name: what transformers loads for it with `dequantize=True`.

  tests/fixtures/hf/deepseek_v3_fp8/{config.json, model.safetensors}
      the DeepSeek-V3 fixture (tests/fixtures/hf/deepseek_v3, bf16, made by
      make_fixtures.py) as DeepSeek released V3/R1: every linear of the attention (q_a, q_b,
      kv_a_proj_with_mqa, kv_b, o_proj), of the dense MLP, of each routed expert and of the
      shared experts as F8_E4M3 + F32 `weight_scale_inv`; embeddings, norms, the router
      (`mlp.gate.weight`) and `lm_head` in BF16; `e_score_correction_bias` in F32 as in
      the release. The release's 128×128 tile is larger than every tiny matrix, and
      `Fp8Quantize` leaves a matrix whose sides its tile does not divide unquantized, so the
      tile here is 4×4: the largest that divides every tiny linear (kv_a has 20 rows).
  tests/fixtures/golden/deepseek_v3_fp8_dequant.safetensors
      the same golden dequantization for that release.
  tests/fixtures/hf/qwen3_next_fp8 and tests/fixtures/golden/qwen3_next_fp8_dequant.safetensors
      the Qwen3-Next fixture the same way (every attention, linear-attention `in_proj_qkvz` /
      `out_proj`, MLP and expert linear; routers, gates and `in_proj_ba` in BF16), 8×8 tiles.

Usage (from the repository root; CPU only; torch 2.11 and transformers 5.17):
  python3 scripts/make_fp8_checkpoint.py                # both
  python3 scripts/make_fp8_checkpoint.py deepseek_v3    # one of qwen3, deepseek_v3, qwen3_next
The Qwen3 full-precision weights come from torch.Generator seeds below, DeepSeek-V3's from
its bf16 fixture; the versions are recorded in the files' `__metadata__` and, for the
fixture folders, in tests/fixtures/PROVENANCE.json. tests/prequant.rs loads the checkpoints
with wmapc and compares.
"""
import json
import os
import re
import sys
from types import SimpleNamespace

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import FineGrainedFP8Config
from transformers.integrations import finegrained_fp8 as fg

SEED = 20261202
BLOCK = [128, 128]
CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 1,
    "dtype": "bfloat16",
    "eos_token_id": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 256,
    "intermediate_size": 384,
    "max_position_embeddings": 256,
    "model_type": "qwen3",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
    "transformers_version": transformers.__version__,
    "vocab_size": 320,
    # As in the hub's Qwen3-*-FP8 config.json.
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": BLOCK,
    },
}


def randn(shape, std, offset):
    g = torch.Generator().manual_seed(SEED + offset)
    return (torch.randn(shape, generator=g) * std).to(torch.bfloat16)


def full_precision():
    c = CONFIG
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    linears = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
               "self_attn.o_proj": (h, q), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h),
               "mlp.down_proj": (h, i)}
    plain, quantize = {}, {}
    n = 0
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        for name, shape in linears.items():
            n += 1
            # One layer's q_proj gets outliers, so some tiles saturate differently.
            w = randn(shape, 0.05, n)
            if layer == 1 and name == "self_attn.q_proj":
                w.view(-1)[5::97] = torch.tensor(40.0, dtype=torch.bfloat16)
            quantize[f"{p}.{name}.weight"] = w
        for norm in ["input_layernorm", "post_attention_layernorm"]:
            n += 1
            plain[f"{p}.{norm}.weight"] = 1 + randn((h,), 0.1, n)
        for norm in ["self_attn.q_norm", "self_attn.k_norm"]:
            n += 1
            plain[f"{p}.{norm}.weight"] = 1 + randn((c["head_dim"],), 0.1, n)
    plain["model.embed_tokens.weight"] = randn((v, h), 0.02, 900)
    plain["model.norm.weight"] = 1 + randn((h,), 0.1, 901)
    plain["lm_head.weight"] = randn((v, h), 0.02, 902)
    return plain, quantize


def quantize(plain, linears, block):
    """The release's tensors (plain ones as they are, each linear as codes + scales) and
    the golden BF16 dequantization of each linear."""
    hq = SimpleNamespace(quantization_config=FineGrainedFP8Config(weight_block_size=block))
    quantize_op, dequantize_op = fg.Fp8Quantize(hq), fg.Fp8Dequantize(hq)
    tensors, golden = dict(plain), {}
    for name, w in linears.items():
        res = quantize_op.convert({name: [w]})
        q, s = res[name], res[name.removesuffix(".weight") + ".weight_scale_inv"]
        assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32, (q.dtype, s.dtype)
        tensors[name] = q
        tensors[name + "_scale_inv"] = s
        golden[name] = dequantize_op._dequantize_one(q, s, output_dtype=torch.bfloat16)
    return tensors, golden


def write(out, golden_path, config, tensors, golden):
    meta = {"transformers": transformers.__version__, "torch": torch.__version__}
    os.makedirs(out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, f"{out}/model.safetensors",
              metadata={"format": "pt"})
    with open(f"{out}/config.json", "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    save_file({k: v.contiguous() for k, v in sorted(golden.items())}, golden_path, metadata=meta)


def qwen3():
    plain, linears = full_precision()
    tensors, golden = quantize(plain, linears, BLOCK)
    write("tests/fixtures/hf/qwen3_fp8", "tests/fixtures/golden/qwen3_fp8_dequant.safetensors",
          CONFIG, tensors, golden)


# The linears DeepSeek-V3's FP8 release quantizes (all but the router `mlp.gate`).
DEEPSEEK_LINEAR = re.compile(
    r"model\.layers\.\d+\.(self_attn\.(q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.(experts\.\d+\.|shared_experts\.)?(gate_proj|up_proj|down_proj))\.weight")
DEEPSEEK_BLOCK = [4, 4]


def deepseek_v3():
    src = "tests/fixtures/hf/deepseek_v3"
    weights = load_file(f"{src}/model.safetensors")
    linears = {k: v for k, v in weights.items() if DEEPSEEK_LINEAR.fullmatch(k)}
    plain = {k: v for k, v in weights.items() if k not in linears}
    for k in plain:
        # The release keeps the router's score-correction bias in f32 (exact from bf16).
        if k.endswith("e_score_correction_bias"):
            plain[k] = plain[k].to(torch.float32)
    tensors, golden = quantize(plain, linears, DEEPSEEK_BLOCK)
    with open(f"{src}/config.json") as f:
        config = json.load(f)
    # As in the hub's DeepSeek-V3 config.json, with the tiny tile.
    config["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": DEEPSEEK_BLOCK,
    }
    out = "tests/fixtures/hf/deepseek_v3_fp8"
    write(out, "tests/fixtures/golden/deepseek_v3_fp8_dequant.safetensors", config, tensors,
          golden)
    prov_path = "tests/fixtures/PROVENANCE.json"
    with open(prov_path) as f:
        prov = json.load(f)
    prov["deepseek_v3_fp8"] = {
        "from": src, "quantizer": "transformers.integrations.finegrained_fp8.Fp8Quantize",
        "weight_block_size": DEEPSEEK_BLOCK, "linears": len(linears),
        "script": "scripts/make_fp8_checkpoint.py",
        "transformers": transformers.__version__, "torch": torch.__version__}
    with open(prov_path, "w") as f:
        f.write(json.dumps(prov, indent=1) + "\n")


# The linears of Qwen3-Next quantized here: every projection of the attention, the linear
# attention's `in_proj_qkvz` and `out_proj`, the MLPs and experts; the routers
# (`mlp.gate`, `shared_expert_gate`) and the linear attention's `in_proj_ba` (its gates)
# stay BF16.
QWEN3_NEXT_LINEAR = re.compile(
    r"model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    r"|linear_attn\.(in_proj_qkvz|out_proj)"
    r"|mlp\.(experts\.\d+\.|shared_expert\.)?(gate_proj|up_proj|down_proj))\.weight")
# The largest square tile dividing every tiny linear (the shared expert is 48 wide).
QWEN3_NEXT_BLOCK = [8, 8]


def release_of(src, out, golden_path, pattern, block, prov_name):
    """`src` (a bf16 fixture made by make_fixtures.py) as an FP8 release: the linears
    `pattern` names as codes + scales, everything else as it is."""
    weights = load_file(f"{src}/model.safetensors")
    linears = {k: v for k, v in weights.items() if pattern.fullmatch(k)}
    plain = {k: v for k, v in weights.items() if k not in linears}
    tensors, golden = quantize(plain, linears, block)
    with open(f"{src}/config.json") as f:
        config = json.load(f)
    config["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": block,
    }
    write(out, golden_path, config, tensors, golden)
    prov_path = "tests/fixtures/PROVENANCE.json"
    with open(prov_path) as f:
        prov = json.load(f)
    prov[prov_name] = {
        "from": src, "quantizer": "transformers.integrations.finegrained_fp8.Fp8Quantize",
        "weight_block_size": block, "linears": len(linears),
        "script": "scripts/make_fp8_checkpoint.py",
        "transformers": transformers.__version__, "torch": torch.__version__}
    with open(prov_path, "w") as f:
        f.write(json.dumps(prov, indent=1) + "\n")


def qwen3_next():
    release_of("tests/fixtures/hf/qwen3_next", "tests/fixtures/hf/qwen3_next_fp8",
               "tests/fixtures/golden/qwen3_next_fp8_dequant.safetensors", QWEN3_NEXT_LINEAR,
               QWEN3_NEXT_BLOCK, "qwen3_next_fp8")


def main():
    makers = {"qwen3": qwen3, "deepseek_v3": deepseek_v3, "qwen3_next": qwen3_next}
    for name in sys.argv[1:] or list(makers):
        makers[name]()


if __name__ == "__main__":
    main()
