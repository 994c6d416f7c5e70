#!/usr/bin/env python3
"""The peers' side of the GPU benchmarks, on the same card and in the same run as ours:
  make    DIR                 write a Llama-3.1-8B-shaped bf16 checkpoint (random weights)
  make-moe DIR [LAYERS]       Qwen3-30B-A3B's shapes with LAYERS (12) of its 48 layers
  make-moe-tiny DIR           the 24-layer one's tensor count with 64-wide tensors
  load    DIR                 transformers + bitsandbytes NF4 from_pretrained onto CUDA (P1)
  kernels                     bnb quantize_4bit / dequantize_4bit, torch per-tensor FP8 (P2–P4)
Prints one line per figure, `name: value`."""
import sys
import time

import torch


def make(path):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                      tie_word_embeddings=False)
    t = time.time()
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path, max_shard_size="5GB")
    n = sum(p.numel() for p in model.parameters())
    print(f"made: {n / 1e9:.2f} B params, {2 * n / 1e9:.1f} GB bf16 in {time.time() - t:.1f} s")


def make_moe(path, layers=12):
    """Qwen3-30B-A3B's shapes with `layers` of its 48 layers (12: 16.2 GB bf16; 24: ≈ 31 GB)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    cfg = Qwen3MoeConfig(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                         num_experts_per_tok=8, vocab_size=151936, tie_word_embeddings=False)
    t = time.time()
    with torch.device("cuda"):
        model = Qwen3MoeForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path, max_shard_size="5GB")
    n = sum(p.numel() for p in model.parameters())
    print(f"made: {n / 1e9:.2f} B params, {2 * n / 1e9:.1f} GB bf16 in {time.time() - t:.1f} s")


def make_moe_tiny(path):
    """The 24-layer Qwen3-30B-A3B tensor count (128 experts, ≈ 9.4k tensors) with 64-wide
    tensors (≈ 0.1 GB): its load time over its tensor count is the per-tensor cost."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    cfg = Qwen3MoeConfig(hidden_size=64, intermediate_size=128, moe_intermediate_size=64, num_hidden_layers=24,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=128,
                         num_experts_per_tok=8, vocab_size=1024, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    from safetensors import safe_open
    with safe_open(f"{path}/model.safetensors", "pt") as f:
        print(f"made: {len(list(f.keys()))} tensors on disk (one per expert)")


def load(path, runs=3):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    times = []
    for _ in range(runs):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t = time.time()
        m = AutoModelForCausalLM.from_pretrained(
            path, device_map="cuda", dtype=torch.bfloat16,
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_compute_dtype=torch.bfloat16))
        torch.cuda.synchronize()
        times.append(time.time() - t)
        final, peak = torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
        del m
    times.sort()
    print(f"peer load nf4 (s): {times[len(times) // 2]:.3f}  (runs {', '.join(f'{x:.2f}' for x in times)})")
    print(f"peer final GB: {final / 1e9:.2f}  peak GB: {peak / 1e9:.2f}")


def bench(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ms.append(a.elapsed_time(b))
    ms.sort()
    return ms[len(ms) // 2]


def kernels():
    import bitsandbytes.functional as F
    x = torch.randn(14336, 4096, device="cuda", dtype=torch.bfloat16)
    n = x.numel()
    ms = bench(lambda: F.quantize_4bit(x, blocksize=64, quant_type="nf4"))
    print(f"peer bnb nf4 quantize: {n / ms / 1e6:.0f} Gel/s")
    q, st = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    ms = bench(lambda: F.dequantize_4bit(q, st))
    print(f"peer bnb nf4 dequantize: {n / ms / 1e6:.0f} Gel/s")

    def fp8():
        amax = x.abs().max().float()
        s = 448.0 / amax
        return (x.float() * s).clamp(-448, 448).to(torch.float8_e4m3fn), 1 / s
    ms = bench(fp8)
    print(f"peer torch fp8 per-tensor quantize: {n / ms / 1e6:.0f} Gel/s")
    h = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    d = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    ms = bench(lambda: d.copy_(h, non_blocking=True), 10)
    print(f"pinned H2D (torch): {(1 << 30) / ms / 1e6:.1f} GB/s")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "make-moe":
        make_moe(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 12)
    elif cmd == "make-moe-tiny":
        make_moe_tiny(sys.argv[2])
    elif cmd == "load":
        load(sys.argv[2])
    else:
        kernels()
