#!/usr/bin/env python3
"""QLoRA on a model filled by wmap: NF4 base weights from `wmap.torch.load_into`, LoRA
adapters from peft, a few AdamW steps on a fixed synthetic batch.

    PYTHONPATH=.gpu/bnb python3 examples/qlora_train.py tests/fixtures/hf/llama --steps 30
    PYTHONPATH=.gpu/bnb python3 examples/qlora_train.py /tmp/llama8b --steps 5 --compare

Prints the loss of every step and steps/s; exits 1 when the loss does not decrease.
`--compare` trains the same adapters (same seed, same data) on the model transformers +
bitsandbytes build with `from_pretrained(..., BitsAndBytesConfig(nf4))` and says whether
the two loss curves are equal step for step (both runs use deterministic algorithms).
Works for MoE checkpoints too (the experts are wmap's `Experts4bit`, dequantized one
expert at a time in the forward; LoRA goes on the Linear4bit layers only). transformers
leaves MoE experts bf16, so an MoE's curves can be equal only with `--bf16-experts`.
Training with the experts offloaded through wmap's weights manager is
`examples/moe_offload_train.py`.
"""

import argparse
import os
import sys
import time

# Deterministic cuBLAS for --compare; must be set before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402


def wmap_model(path, device, attn, quantize_experts=True):
    import wmap.torch as wt
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), attn_implementation=attn)
    store = wt.load_into(model, path, quant="nf4", device=device, quantize_experts=quantize_experts)
    model._wmap_store = store  # the bytes the model's tensors view stay owned by it
    return model


def reference_model(path, device, attn):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.bfloat16,
        device_map=device,
        attn_implementation=attn,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        ),
    )


def with_lora(model, seed, rank):
    """peft's QLoRA recipe: frozen base, fp32 norms/embeddings, LoRA on every Linear4bit."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)})
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(seed)  # the adapters' initial values: equal for both runs
    return get_peft_model(model, config)


def batch(vocab, device, size, length):
    """A fixed, learnable batch: each row an arithmetic sequence of token ids."""
    step = torch.arange(1, size + 1, device=device).reshape(size, 1) * 3
    return (torch.arange(length, device=device).reshape(1, length) * step + 5) % vocab


def steps(model, opt, ids, count, device, label=""):
    """`count` AdamW steps on one batch, each loss printed; the losses and the seconds."""
    losses = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for step in range(count):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        print(f"{label}step {step:3d}  loss {losses[-1]:.6f}", flush=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return losses, time.perf_counter() - t


def train(model, args, device):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    ids = batch(model.config.vocab_size, device, args.batch, args.length)
    losses, seconds = steps(model, opt, ids, args.steps, device)
    trainable = sum(p.numel() for p in params)
    print(f"{args.steps} steps in {seconds:.2f} s: {args.steps / seconds:.2f} steps/s, "
          f"{trainable} trainable params, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses


def run(build, args, device, label):
    torch.manual_seed(args.seed)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    model = build(args.path, device, args.attn)
    print(f"{label}: loaded in {time.perf_counter() - t:.2f} s")
    model = with_lora(model, args.seed, args.rank)
    losses = train(model, args, device)
    if device.startswith("cuda"):
        print(f"{label}: torch peak {torch.cuda.max_memory_allocated() / 1e9:.2f} GB")
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", nargs="?", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf", "llama"))
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", action="store_true", help="also train on from_pretrained's model and compare losses")
    ap.add_argument("--bf16-experts", action="store_true",
                    help="keep MoE experts bf16, as from_pretrained does (so --compare can be equal on an MoE)")
    ap.add_argument("--attn", default=None,
                    help="attention implementation (default: eager with --compare, whose backward is "
                         "deterministic, else sdpa)")
    args = ap.parse_args()
    args.attn = args.attn or ("eager" if args.compare else "sdpa")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Imports and the model class's first build, outside the timed loads.
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.path))

    def build(path, device, attn):
        return wmap_model(path, device, attn, quantize_experts=not args.bf16_experts)

    ours = run(build, args, args.device, "wmap load_into")
    ok = ours[-1] < ours[0]
    print(f"loss decreased: {ok}")
    if args.compare:
        import gc

        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        ref = run(reference_model, args, args.device, "from_pretrained")
        same = ours == ref
        worst = max(abs(a - b) for a, b in zip(ours, ref))
        print(f"loss curves equal step for step: {same} (max |Δ| {worst:.3g} over {len(ours)} steps)")
        ok &= same
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
