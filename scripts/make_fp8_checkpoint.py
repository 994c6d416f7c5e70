#!/usr/bin/env python3
"""Writes a tiny fine-grained FP8 release of a Qwen3 model, quantized by transformers' own
`Fp8Quantize`, and the golden dequantization of each quantized linear by transformers' own
`Fp8Dequantize`:

  tests/fixtures/hf/qwen3_fp8/{config.json, model.safetensors}
      every linear of the decoder layers stored as `weight` F8_E4M3 + `weight_scale_inv` F32
      `[rows/128, cols/128]`; embeddings, norms and `lm_head` in BF16 (as the hub's
      Qwen3-*-FP8 releases), and a `quantization_config` like theirs.
  tests/fixtures/golden/qwen3_fp8_dequant.safetensors
      for each quantized checkpoint tensor `X.weight`, its BF16 dequantization under the
      same name: what transformers loads for it with `dequantize=True`.

Usage (from the repository root; CPU only; torch 2.11 and transformers 5.17):
  python3 scripts/make_fp8_checkpoint.py
The full-precision weights come from torch.Generator seeds below; the versions are recorded
in the files' `__metadata__`. tests/prequant.rs loads the checkpoint with wmapc and compares.
"""
import json
import os
from types import SimpleNamespace

import torch
import transformers
from safetensors.torch import save_file
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


def main():
    hq = SimpleNamespace(quantization_config=FineGrainedFP8Config(weight_block_size=BLOCK))
    quantize_op, dequantize_op = fg.Fp8Quantize(hq), fg.Fp8Dequantize(hq)
    plain, linears = full_precision()
    tensors, golden = dict(plain), {}
    for name, w in linears.items():
        res = quantize_op.convert({name: [w]})
        q, s = res[name], res[name.removesuffix(".weight") + ".weight_scale_inv"]
        assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32, (q.dtype, s.dtype)
        tensors[name] = q
        tensors[name + "_scale_inv"] = s
        golden[name] = dequantize_op._dequantize_one(q, s, output_dtype=torch.bfloat16)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__}
    out = "tests/fixtures/hf/qwen3_fp8"
    os.makedirs(out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, f"{out}/model.safetensors",
              metadata={"format": "pt"})
    with open(f"{out}/config.json", "w") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    save_file({k: v.contiguous() for k, v in sorted(golden.items())},
              "tests/fixtures/golden/qwen3_fp8_dequant.safetensors", metadata=meta)


if __name__ == "__main__":
    main()
