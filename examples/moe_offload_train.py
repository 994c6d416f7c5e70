#!/usr/bin/env python3
"""MoE training with the experts offloaded through wmap's weights manager, against the
same run with every expert resident.

    PYTHONPATH=.gpu/bnb python3 examples/moe_offload_train.py tests/fixtures/hf/qwen3_moe
    PYTHONPATH=.gpu/bnb python3 examples/moe_offload_train.py /tmp/qwen3moe12 --steps 5
    python3 examples/moe_offload_train.py --device cpu --no-lora --dense-linears   # no GPU, no peft

The model is filled by `wmap.torch.load_into(..., quant="nf4", offload_budget=B)`: the
experts stay NF4 in the weights manager's page-locked host pool and are fetched per
routed expert with `store.get` (dequantized into pooled bf16 device buffers), fetched
again in backward instead of kept, and prefetched around each layer (`wmap.experts`).
The attention projections are bitsandbytes Linear4bit with LoRA adapters from peft
(`--no-lora`: only the RMSNorm weights train, whose gradients still pass through every
expert; `--dense-linears`: the projections stay bf16, so neither bitsandbytes nor peft is
needed).

Two runs, same seed and data, deterministic algorithms:
  offloaded  a device budget below the experts' size (`--budget-fraction` of them, or
             `--offload-budget` bytes);
  resident   a budget that holds every group, all brought in before the first step: the
             same fetch and dequantization path, nothing ever evicted.
Prints both loss curves and whether they are equal step for step, the device peaks
(wmap's bound and torch's allocator), the copies (bytes, their time at the measured
host-to-device bandwidth, and how much of it the training waited for, i.e. was not
hidden), steps/s, and a short table. Exits 1 when the curves differ.
"""

import argparse
import gc
import os
import sys
import time

# Deterministic cuBLAS; must be set before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qlora_train import batch, steps, with_lora  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def experts_bytes(path):
    """The experts' NF4 size from the plan: half a byte per element plus a float32
    absmax per 64 (an estimate of the host pool before loading, for the budget)."""
    import wmap

    total = 0
    for t in wmap.plan(path)["targets"]:
        if t.get("offload") and t["quantizable"]:
            n = 1
            for d in t["shape"]:
                n *= d
            total += n // 2 + 4 * (n // 64)
    return total


def build(args, budget):
    import wmap.torch as wt
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.path), attn_implementation="eager")
    store = wt.load_into(model, args.path, quant="nf4", device=args.device, offload_budget=budget,
                         offload_policy=args.policy, quantize_linears=not args.dense_linears, via=args.via)
    model._wmap_store = store
    return model, store


def trainable(model, args):
    if args.no_lora:
        for name, p in model.named_parameters():
            p.requires_grad = "norm" in name
        return model
    return with_lora(model, args.seed, args.rank)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def h2d_bandwidth(device):
    """Page-locked host-to-device bytes/s, as the weights manager's copies run."""
    if not device.startswith("cuda"):
        return None
    host = torch.empty(256 << 20, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty_like(host, device=device)
    dev.copy_(host, non_blocking=True)
    sync(device)
    t = time.perf_counter()
    for _ in range(4):
        dev.copy_(host, non_blocking=True)
    sync(device)
    return 4 * host.numel() / (time.perf_counter() - t)


def warm_up(args):
    """What only the first load of a process pays (transformers' lazy model imports, CUDA
    initialisation, bitsandbytes' import), paid before either timed load."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.path), attn_implementation="eager")
    if args.device.startswith("cuda"):
        torch.zeros(1, device=args.device)
        sync(args.device)
    if not args.dense_linears:
        import bitsandbytes  # noqa: F401


def run(args, label, budget, warm_all):
    torch.manual_seed(args.seed)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    model, store = build(args, budget)
    print(f"{label}: loaded in {time.perf_counter() - t:.2f} s ({type(store).__name__}), budget {mb(budget)} MB")
    if warm_all:
        for g in store.groups():
            if not store.prefetch(g):
                raise SystemExit(f"{label}: the budget does not hold group {g}")
    model = trainable(model, args)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    ids = batch(model.config.vocab_size, args.device, args.batch, args.length)
    before = store.stats()
    losses, seconds = steps(model, opt, ids, args.steps, args.device, label=f"{label} ")
    s = store.stats()
    moved = s["bytes_moved"] - before["bytes_moved"]
    waited = s["waited_seconds"] - before["waited_seconds"]
    out = {
        "losses": losses,
        "steps_per_s": args.steps / seconds,
        "trainable": sum(p.numel() for p in params),
        "moved": moved,
        "waited": waited,
        "hits": s["hits"] - before["hits"],
        "misses": s["misses"] - before["misses"],
        "host_bytes": s.get("host_bytes", 0),
        "wmap_peak": s.get("peak_device_bytes"),
        "torch_peak": torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None,
    }
    print(f"{label}: {args.steps} steps in {seconds:.2f} s ({out['steps_per_s']:.2f} steps/s), "
          f"{out['trainable']} trainable params; {out['hits']} hits, {out['misses']} misses, "
          f"{mb(moved)} MB moved, {waited:.3f} s waited")
    del model, store, opt, params
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def mb(x):
    return "-" if x is None else f"{x / 1e6:.1f}"


def table(runs, bw):
    print(f"\n{'run':<10} {'steps/s':>8} {'MB moved':>9} {'copy s':>8} {'waited s':>9} {'hidden':>7} "
          f"{'wmap peak MB':>13} {'torch peak MB':>14} {'final loss':>11}")
    for label, r in runs:
        copy = r["moved"] / bw if bw else None
        hidden = "-" if not copy else f"{100 * max(0.0, 1 - r['waited'] / copy):.1f}%"
        print(f"{label:<10} {r['steps_per_s']:>8.2f} {mb(r['moved']):>9} "
              f"{'-' if copy is None else f'{copy:.3f}':>8} {r['waited']:>9.3f} {hidden:>7} "
              f"{mb(r['wmap_peak']):>13} {mb(r['torch_peak']):>14} {r['losses'][-1]:>11.6f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", nargs="?", default=os.path.join(HERE, "..", "tests", "fixtures", "hf", "qwen3_moe"))
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--via", choices=("device", "host"), default=None,
                    help="wmap's GPU store (default on CUDA) or its host store copied per fetch")
    ap.add_argument("--offload-budget", type=int, default=None, help="device budget in bytes for the experts")
    ap.add_argument("--budget-fraction", type=float, default=0.25, help="budget as a fraction of the experts' size")
    # lru by default: the order-aware policy records the first pass until a group repeats,
    # and an expert's group is used twice in a row (gate_up, then down).
    ap.add_argument("--policy", choices=("lru", "order"), default="lru", help="the weights manager's eviction policy")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-lora", action="store_true", help="train the RMSNorm weights instead (no peft)")
    ap.add_argument("--dense-linears", action="store_true", help="attention projections bf16 (no bitsandbytes)")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True, warn_only=True)

    experts = experts_bytes(args.path)
    budget = args.offload_budget or max(1, int(experts * args.budget_fraction))
    print(f"experts: about {mb(experts)} MB in NF4; offloaded budget {mb(budget)} MB")
    bw = h2d_bandwidth(args.device)
    if bw:
        print(f"page-locked host-to-device copies: {bw / 1e9:.1f} GB/s")
    warm_up(args)
    offloaded = run(args, "offloaded", budget, warm_all=False)
    if offloaded["host_bytes"] and budget >= offloaded["host_bytes"]:
        print(f"note: the budget holds all {mb(offloaded['host_bytes'])} MB of experts; nothing had to move")
    resident = run(args, "resident", 2 * max(offloaded["host_bytes"], experts) + (1 << 20), warm_all=True)
    a, b = offloaded["losses"], resident["losses"]
    same = a == b
    worst = max(abs(x - y) for x, y in zip(a, b))
    print(f"\nloss curves equal step for step: {same} (max |Δ| {worst:.3g} over {len(a)} steps)")
    print(f"loss decreased: {a[-1] < a[0]} ({a[0]:.4f} -> {a[-1]:.4f})")
    table([("offloaded", offloaded), ("resident", resident)], bw)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
