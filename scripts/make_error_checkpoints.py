#!/usr/bin/env python3
"""Writes the tiny, deliberately broken checkpoints behind the E05xx/W0501 fixtures.

Each case is a folder `tests/fixtures/errors/checkpoints/<CODE>-<slug>/` holding a
mini Llama `config.json` and a checkpoint with exactly one thing wrong. Safetensors
files are written by hand (standard library only): an 8-byte little-endian header
length, a JSON header padded with spaces to a multiple of 8, then the tensor bytes.

Deterministic and idempotent: each case folder is removed and rewritten, so running
the script again yields identical bytes. Nothing outside those folders is touched.

    python3 scripts/make_error_checkpoints.py            # rewrite every case
    python3 scripts/make_error_checkpoints.py --valid D  # also write an unbroken one to D
"""

import json
import shutil
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "errors" / "checkpoints"

# tests/fixtures/hf/llama/config.json, shrunk: 1 layer, width 8, 2 query heads sharing
# 1 key/value head of size 4, so every tensor is a few hundred bytes at most.
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "dtype": "bfloat16",
    "eos_token_id": 2,
    "head_dim": 4,
    "hidden_act": "silu",
    "hidden_size": 8,
    "initializer_range": 0.02,
    "intermediate_size": 16,
    "max_position_embeddings": 64,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "tie_word_embeddings": False,
    "transformers_version": "5.17.0",
    "use_cache": True,
    "vocab_size": 16,
}

DTYPE_SIZE = {"F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I32": 4, "I64": 8, "U8": 1}


def llama_tensors():
    """Every tensor the stdlib Llama needs for CONFIG: name -> (dtype, shape)."""
    h, i, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    q = CONFIG["num_attention_heads"] * CONFIG["head_dim"]
    kv = CONFIG["num_key_value_heads"] * CONFIG["head_dim"]
    t = {
        "model.embed_tokens.weight": [v, h],
        "model.norm.weight": [h],
        "lm_head.weight": [v, h],
    }
    for n in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{n}"
        t[f"{p}.input_layernorm.weight"] = [h]
        t[f"{p}.post_attention_layernorm.weight"] = [h]
        t[f"{p}.self_attn.q_proj.weight"] = [q, h]
        t[f"{p}.self_attn.k_proj.weight"] = [kv, h]
        t[f"{p}.self_attn.v_proj.weight"] = [kv, h]
        t[f"{p}.self_attn.o_proj.weight"] = [h, q]
        t[f"{p}.mlp.gate_proj.weight"] = [i, h]
        t[f"{p}.mlp.up_proj.weight"] = [i, h]
        t[f"{p}.mlp.down_proj.weight"] = [h, i]
    return {name: ("BF16", shape) for name, shape in sorted(t.items())}


def nbytes(dtype, shape):
    n = DTYPE_SIZE[dtype]
    for d in shape:
        n *= d
    return n


def fill(n):
    """n deterministic data bytes: bf16 1.0 (0x3F80) repeated."""
    return (b"\x80\x3f" * (n // 2 + 1))[:n]


def safetensors(tensors, header_patch=None):
    """Bytes of a safetensors file; tensors are laid out in name order.

    `header_patch(header)` may edit the header dict after the offsets are assigned,
    to describe the data wrongly.
    """
    header, data, cursor = {}, b"", 0
    for name in sorted(tensors):
        dtype, shape = tensors[name]
        n = nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [cursor, cursor + n]}
        data += fill(n)
        cursor += n
    if header_patch:
        header_patch(header)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def index_json(weight_map, tensors):
    """The index HF writes: `total_size` counts the bytes of every tensor it maps."""
    total = sum(nbytes(*tensors[n]) for n in weight_map if n in tensors)
    doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(doc, indent=2) + "\n").encode()


def config_json():
    return (json.dumps(CONFIG, indent=2) + "\n").encode()


# --- the cases: folder name -> {file name: bytes} -----------------------------------


def case_e0501():
    # A config downloaded without its weights.
    return {}


def case_e0502():
    # Only PyTorch pickle weights; the bytes are a protocol-2 pickle of `{}`.
    return {"pytorch_model.bin": b"\x80\x02}q\x00."}


def case_e0503():
    # The 8-byte prefix claims a 4096-byte header; the file is much shorter.
    good = safetensors(llama_tensors())
    return {"model.safetensors": struct.pack("<Q", 4096) + good[8:]}


def case_e0504():
    # `model.norm.weight` claims 16 elements (32 bytes) but its offsets span 16 bytes.
    def patch(header):
        header["model.norm.weight"]["shape"] = [16]

    return {"model.safetensors": safetensors(llama_tensors(), patch)}


def case_e0505():
    # The index sends `lm_head.weight` to a file outside the checkpoint folder.
    tensors = llama_tensors()
    shard = "model-00001-of-00001.safetensors"
    weight_map = {name: shard for name in tensors}
    weight_map["lm_head.weight"] = "../outside.safetensors"
    index = index_json(weight_map, tensors)
    del tensors["lm_head.weight"]
    return {shard: safetensors(tensors), "model.safetensors.index.json": index}


def case_e0506():
    # Two shards both hold `model.norm.weight`.
    tensors = llama_tensors()
    a, b = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    first = {n: t for n, t in tensors.items() if n.startswith("model.layers.")}
    second = {n: t for n, t in tensors.items() if n not in first}
    first["model.norm.weight"] = tensors["model.norm.weight"]
    weight_map = {n: a for n in first}
    weight_map.update({n: b for n in second})
    return {a: safetensors(first), b: safetensors(second), "model.safetensors.index.json": index_json(weight_map, tensors)}


def case_e0507():
    # `model.norm.weight` is stored as I32; the param is bf16.
    tensors = llama_tensors()
    tensors["model.norm.weight"] = ("I32", tensors["model.norm.weight"][1])
    return {"model.safetensors": safetensors(tensors)}


def case_e0507_fp8():
    # A fine-grained FP8 `q_proj` with its `weight_scale_inv`: the param is bf16, and
    # converting the FP8 bytes without the scale would load wrong values.
    tensors = llama_tensors()
    tensors["model.layers.0.self_attn.q_proj.weight"] = ("F8_E4M3", [8, 8])
    tensors["model.layers.0.self_attn.q_proj.weight_scale_inv"] = ("F32", [1, 1])
    return {"model.safetensors": safetensors(tensors)}


def with_qkv_biases():
    # A Qwen2-style checkpoint: Llama plus q/k/v biases, which the Llama mapping lacks.
    tensors = llama_tensors()
    q = CONFIG["num_attention_heads"] * CONFIG["head_dim"]
    kv = CONFIG["num_key_value_heads"] * CONFIG["head_dim"]
    for n in range(CONFIG["num_hidden_layers"]):
        for proj, width in (("q", q), ("k", kv), ("v", kv)):
            tensors[f"model.layers.{n}.self_attn.{proj}_proj.bias"] = ("BF16", [width])
    return {"model.safetensors": safetensors(tensors)}


def case_e0508():
    # `k_proj` of layer 0 is absent.
    tensors = llama_tensors()
    del tensors["model.layers.0.self_attn.k_proj.weight"]
    return {"model.safetensors": safetensors(tensors)}


def case_e0509():
    # `k_proj` has one row per query head ([8, 8]) though the config has 1 KV head ([4, 8]).
    tensors = llama_tensors()
    tensors["model.layers.0.self_attn.k_proj.weight"] = ("BF16", [8, 8])
    return {"model.safetensors": safetensors(tensors)}


def with_extra_tensor():
    # A tensor nothing in the mapping claims or ignores.
    tensors = llama_tensors()
    tensors["model.layers.0.self_attn.rotary_emb.bias"] = ("BF16", [2])
    return {"model.safetensors": safetensors(tensors)}


CASES = {
    "E0501-checkpoint-not-found": case_e0501,
    "E0502-pickle-checkpoint": case_e0502,
    "E0503-invalid-header": case_e0503,
    "E0504-invalid-tensor-extent": case_e0504,
    "E0505-invalid-shard-index": case_e0505,
    "E0506-duplicate-tensor": case_e0506,
    "E0507-unsupported-dtype": case_e0507,
    "E0507-unsupported-dtype-2": case_e0507_fp8,
    "E0508-missing-tensor": case_e0508,
    "E0509-tensor-shape-mismatch": case_e0509,
    "E0510-unclaimed-tensor-refused": with_extra_tensor,
    "E0510-unclaimed-tensor-refused-2": with_qkv_biases,
    "W0501-unclaimed-tensor": with_extra_tensor,
}


def write_case(folder, files):
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    files = {"config.json": config_json(), **files}
    for name, data in sorted(files.items()):
        (folder / name).write_bytes(data)


def main(argv):
    for name, make in CASES.items():
        write_case(OUT / name, make())
    if len(argv) == 3 and argv[1] == "--valid":
        write_case(Path(argv[2]), {"model.safetensors": safetensors(llama_tensors())})
    elif len(argv) != 1:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
