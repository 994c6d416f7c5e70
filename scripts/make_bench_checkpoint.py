#!/usr/bin/env python3
"""Writes a Llama-shaped bf16 checkpoint for timing `wmapc load` as a user runs it.

Standard library only. Sizes default to a 0.77 GB model (hidden 2048, intermediate 8192,
4 layers, 16 query and 8 key/value heads of 128, vocabulary 32000); values are
pseudo-random finite bf16 (a seeded generator; the top byte of each value is masked so no
value is inf or NaN). One `model.safetensors`, header written by hand as in
`scripts/make_error_checkpoints.py`.

    python3 scripts/make_bench_checkpoint.py DIR [--layers N]
"""

import json
import random
import struct
import sys
from pathlib import Path

HIDDEN, INTER, VOCAB, HEADS, KV_HEADS, HEAD_DIM = 2048, 8192, 32000, 16, 8, 128


def tensors(layers):
    yield "model.embed_tokens.weight", [VOCAB, HIDDEN]
    for i in range(layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", [HIDDEN]
        yield p + "post_attention_layernorm.weight", [HIDDEN]
        yield p + "self_attn.q_proj.weight", [HEADS * HEAD_DIM, HIDDEN]
        yield p + "self_attn.k_proj.weight", [KV_HEADS * HEAD_DIM, HIDDEN]
        yield p + "self_attn.v_proj.weight", [KV_HEADS * HEAD_DIM, HIDDEN]
        yield p + "self_attn.o_proj.weight", [HIDDEN, HEADS * HEAD_DIM]
        yield p + "mlp.gate_proj.weight", [INTER, HIDDEN]
        yield p + "mlp.up_proj.weight", [INTER, HIDDEN]
        yield p + "mlp.down_proj.weight", [HIDDEN, INTER]
    yield "model.norm.weight", [HIDDEN]
    yield "lm_head.weight", [VOCAB, HIDDEN]


def main():
    out = Path(sys.argv[1])
    layers = int(sys.argv[sys.argv.index("--layers") + 1]) if "--layers" in sys.argv else 4
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    header, at = {}, 0
    specs = list(tensors(layers))
    for name, shape in specs:
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [at, at + n]}
        at += n
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    # The high byte of a little-endian bf16: clear bit 6 so the exponent is never all ones.
    finite = bytes(b & 0xBF for b in range(256))
    rng = random.Random(20261201)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        left = at
        while left:
            k = min(left, 64 << 20)
            chunk = bytearray(rng.randbytes(k))
            chunk[1::2] = chunk[1::2].translate(finite)
            f.write(chunk)
            left -= k
    print(f"wrote {out}: {len(specs)} tensors, {at / 1e9:.2f} GB of bf16")


if __name__ == "__main__":
    main()
