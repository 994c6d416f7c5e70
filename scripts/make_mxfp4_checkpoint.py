#!/usr/bin/env python3
"""Writes a tiny GPT-OSS-style MXFP4 checkpoint and transformers' own dequantization of it:

  tests/fixtures/prequant/gpt_oss_mxfp4/{config.json, model.safetensors}
      per layer `mlp.experts.{gate_up,down}_proj_blocks` U8 [E, rows, cols/32, 16] (two E2M1
      codes a byte, low nibble first) and `..._scales` U8 E8M0 [E, rows, cols/32], random
      codes and scales (a few extreme exponents included), as GPT-OSS releases store them.
  tests/fixtures/golden/gpt_oss_mxfp4_dequant.safetensors
      for each `X_blocks`, under the name `X`, the BF16 that transformers 5.17's
      `convert_moe_packed_tensors` gives: [E, cols, rows], the layout GPT-OSS computes with.

  tests/fixtures/prequant/gpt_oss_release/{config.json, model.safetensors}
      the GPT-OSS release layout of the whole tiny model: tests/fixtures/hf/gpt_oss (made by
      scripts/make_fixtures.py) with each layer's `mlp.experts.{gate_up,down}_proj` replaced by
      random `_blocks` / `_scales` as above, every other tensor copied as it is, and the
      release's `quantization_config` added to its config.
  tests/fixtures/golden/gpt_oss_release_dequant.safetensors
      transformers' dequantization of those experts, as above.

Usage (from the repository root; CPU only; torch and transformers installed):
  python3 scripts/make_mxfp4_checkpoint.py
tests/prequant.rs maps it with a user `.wmap` (`stacked(...)` over `mxfp4(...)`) and compares.
"""
import json
import os

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

SEED = 20261203
CONFIG = {"architectures": ["GptOssForCausalLM"], "num_hidden_layers": 2, "num_local_experts": 2,
          "hidden_size": 64, "intermediate_size": 32}


def main():
    g = torch.Generator().manual_seed(SEED)
    c = CONFIG
    e, h, i = c["num_local_experts"], c["hidden_size"], c["intermediate_size"]
    tensors, golden = {}, {}
    for layer in range(c["num_hidden_layers"]):
        for name, (rows, cols) in {"gate_up_proj": (2 * i, h), "down_proj": (h, i)}.items():
            key = f"model.layers.{layer}.mlp.experts.{name}"
            blocks = torch.randint(0, 256, (e, rows, cols // 32, 16), generator=g, dtype=torch.uint8)
            scales = torch.randint(110, 135, (e, rows, cols // 32), generator=g, dtype=torch.uint8)
            scales.view(-1)[:3] = torch.tensor([1, 127, 200], dtype=torch.uint8)
            tensors[f"{key}_blocks"] = blocks
            tensors[f"{key}_scales"] = scales
            golden[key] = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16).contiguous()
            assert golden[key].shape == (e, cols, rows), golden[key].shape
    out = "tests/fixtures/prequant/gpt_oss_mxfp4"
    os.makedirs(out, exist_ok=True)
    save_file(tensors, f"{out}/model.safetensors", metadata={"format": "pt"})
    with open(f"{out}/config.json", "w") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    meta = {"transformers": transformers.__version__, "torch": torch.__version__}
    save_file(golden, "tests/fixtures/golden/gpt_oss_mxfp4_dequant.safetensors", metadata=meta)


def random_mxfp4(g, e, rows, cols):
    """Random MXFP4 blocks and E8M0 scales for [e, rows, cols], extreme exponents included."""
    blocks = torch.randint(0, 256, (e, rows, cols // 32, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(110, 135, (e, rows, cols // 32), generator=g, dtype=torch.uint8)
    scales.view(-1)[:3] = torch.tensor([1, 127, 200], dtype=torch.uint8)
    return blocks, scales


def release():
    """The whole tiny GPT-OSS fixture in the release layout (MXFP4 experts)."""
    src = "tests/fixtures/hf/gpt_oss"
    with open(f"{src}/config.json") as f:
        config = json.load(f)
    # As the hub's openai/gpt-oss-20b config says: everything but the experts stays bf16.
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                   "model.embed_tokens", "lm_head"],
    }
    g = torch.Generator().manual_seed(SEED + 1)
    e, h, i = config["num_local_experts"], config["hidden_size"], config["intermediate_size"]
    tensors, golden = load_file(f"{src}/model.safetensors"), {}
    for layer in range(config["num_hidden_layers"]):
        for name, (rows, cols) in {"gate_up_proj": (2 * i, h), "down_proj": (h, i)}.items():
            key = f"model.layers.{layer}.mlp.experts.{name}"
            del tensors[key]
            blocks, scales = random_mxfp4(g, e, rows, cols)
            tensors[f"{key}_blocks"] = blocks
            tensors[f"{key}_scales"] = scales
            golden[key] = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16).contiguous()
    out = "tests/fixtures/prequant/gpt_oss_release"
    os.makedirs(out, exist_ok=True)
    save_file(tensors, f"{out}/model.safetensors", metadata={"format": "pt"})
    with open(f"{out}/config.json", "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    meta = {"transformers": transformers.__version__, "torch": torch.__version__}
    save_file(golden, "tests/fixtures/golden/gpt_oss_release_dequant.safetensors", metadata=meta)


if __name__ == "__main__":
    main()
    release()
