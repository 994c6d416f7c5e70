#!/usr/bin/env python3
"""Issue 12's GPU proofs for the Python package, in one run (the lead runs it on the H200
with a CUDA build of the wheel and `PYTHONPATH=.gpu/bnb`). Each section is wrapped so a
failure prints its traceback and the others still report; a short table comes last.

  1. logits  Llama fixture and the Llama-3.1-8B shape ($CKPT): `wmap.torch.load_into(...,
             quant="nf4")` against `from_pretrained(..., BitsAndBytesConfig(nf4))`: every
             Linear4bit's codes and absmax, the logits (`torch.equal`), both load times;
             when wmap loaded onto the GPU, once more through host memory (`via="host"`).
  2. moe     Qwen3-MoE fixture and the 12-layer Qwen3-30B-A3B shape ($MOE): transformers
             leaves the 3-D experts bf16; ours quantizes them (Experts4bit). Memory side by
             side; logits bit-equal with `quantize_experts=False` (same experts on both
             sides), and with quantized experts the expert codes equal bnb's own
             `quantize_4bit` of each expert (the logits then differ, by design).
  3. nocopy  `torch.from_dlpack` of every tensor of `wmap.load(..., device=...)` has the
             store's own pointer (`Tensor.data_ptr`), bytes equal to a host load.
  4. bnb     `dequantize_4bit(codes, quant_state)` on wmap's tensors equals `store.get`;
             `bnb.matmul_4bit` runs on them.
  5. offload `wmap.load(..., device=..., offload_budget=B)`: the GPU weights manager's
             `get` of every expert equals the host store's, without a copy (pointer), the
             groups within the budget; then `examples/moe_offload_train.py` (QLoRA with the
             experts offloaded against all resident: loss curves equal step for step, device
             peaks, copy time hidden) on the Qwen3-MoE fixture and the 12-layer shape.

usage: gpu_python.py [--device cuda:0] [--runs 3] [--skip-large]
On the GPU machine, with the CUDA wheel installed (`MATURIN_PEP517_ARGS="--features cuda"
pip install .` here, then `pip install --no-deps` of that wheel there):
    PYTHONPATH=$PWD/.gpu/bnb OUT=/tmp/wmap-py python3 scripts/gpu_python.py
Env: CKPT (default /tmp/llama8b), MOE (default /tmp/qwen3moe12), OUT (logs, optional).
The large checkpoints are made with scripts/bench_peers.py when absent (GPU only).
`--device cpu --skip-large` runs every section on the fixtures without a GPU.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "hf")
ROWS = []  # (section, subject, result, figures)
LOG = None


def say(*args):
    line = " ".join(str(a) for a in args)
    print(line, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


def row(section, subject, ok, figures):
    ROWS.append((section, subject, "ok" if ok is True else ("FAIL" if ok is False else str(ok)), figures))
    say(f"[{section}] {subject}: {ROWS[-1][2]}  {figures}")


def section(name, fn, *args, subject=None):
    """Runs one section; a failure is a row, its traceback in the log."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 (report and go on: the other sections' figures matter)
        say(traceback.format_exc())
        subject = subject or " ".join(os.path.basename(str(a)) for a in args[:1])
        row(name, subject, "ERROR", f"{type(e).__name__}: {e}"[:160])
    finally:
        free()


def free():
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def used_bytes(device):
    """Device memory in use by anyone in this process (torch's pool and wmap's own
    allocations alike): what the driver reports, after torch's cache is emptied."""
    if not device.startswith("cuda"):
        return 0
    free()
    f, t = torch.cuda.mem_get_info()
    return t - f


def warm(path):
    """Reads the checkpoint into the page cache, and builds its model once on the meta
    device, so neither side's first timed run pays for disk reads or imports."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            with open(os.path.join(path, f), "rb") as h:
                while h.read(1 << 26):
                    pass


def timed(fn, runs, device):
    """(last result, median seconds, all seconds, device bytes held by the result, torch
    peak); earlier results are dropped before the next run. One run when a run takes
    longer than 30 s."""
    times, out, held, peak = [], None, 0, 0
    for i in range(runs):
        out = None
        base = used_bytes(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
        held = used_bytes(device) - base
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
        if times[-1] > 30:
            break
    return out, statistics.median(times), times, held, peak


def ours(path, device, **kw):
    """A meta-device model filled by wmap: (model, store, via)."""
    import wmap.torch as wt
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    try:
        store = wt.load_into(model, path, quant="nf4", device=device, **kw)
        via = "device" if type(store).__name__ == "DeviceStore" else "host"
    except Exception:
        if kw.get("via") or not device.startswith("cuda"):
            raise
        say("load_into via the device failed; retrying via host memory:\n" + traceback.format_exc())
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
        store = wt.load_into(model, path, quant="nf4", device=device, via="host", **kw)
        via = "host (device failed)"
    return model, store, via


def reference(path, device):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.bfloat16,
        device_map=device,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        ),
    )


def linear4bit_state(model):
    """Each Linear4bit's packed codes and absmax, copied: on the CPU, bitsandbytes repacks
    a layer's weight in place at its first eval forward, so compare before any forward."""
    import bitsandbytes as bnb

    out = {}
    for n, m in model.named_modules():
        if isinstance(m, bnb.nn.Linear4bit):
            out[n] = (m.weight.data.view(torch.uint8).flatten().clone(), m.weight.quant_state.absmax.clone())
    return {"types": {n: type(m) for n, m in model.named_modules()}, "linear4bit": out}


def linear4bit_diff(a, b):
    """(layers, weights, codes differing, absmax differing, module-type mismatches) between
    two ``linear4bit_state``s."""
    ta, tb = a["types"], b["types"]
    types = sum(ta.get(n) is not t for n, t in tb.items()) + len(set(ta) ^ set(tb))
    layers = weights = codes = absmax = 0
    for n, (cb, qb) in b["linear4bit"].items():
        if n not in a["linear4bit"]:
            continue
        ca, qa = a["linear4bit"][n]
        layers += 1
        weights += cb.numel() * 2
        codes += int((ca != cb).sum()) if ca.shape == cb.shape else cb.numel()
        absmax += int((qa != qb).sum()) if qa.shape == qb.shape else qb.numel()
    return layers, weights, codes, absmax, types


def logits(model, device, vocab):
    ids = (torch.arange(48, device=device).reshape(1, 48) * 7 + 3) % vocab
    with torch.no_grad():
        return model(ids).logits.float()


def gb(n):
    return f"{n / 1e9:.2f} GB"


def compare_logits(path, device, runs):
    """Section 1: one dense checkpoint."""
    warm(path)
    name = os.path.basename(path.rstrip("/"))
    (a, store, via), ta, ra, held_a, _ = timed(lambda: ours(path, device), runs, device)
    b, tb, rb, held_b, peak_b = timed(lambda: reference(path, device), runs, device)
    state_b = linear4bit_state(b)
    layers, weights, codes, absmax, types = linear4bit_diff(linear4bit_state(a), state_b)
    la, lb = logits(a, device, a.config.vocab_size), logits(b, device, b.config.vocab_size)
    equal = torch.equal(la, lb)
    row("logits", f"{name} Linear4bit", codes == 0 and absmax == 0 and types == 0 and layers > 0,
        f"{layers} layers, {weights} weights, codes≠ {codes}, absmax≠ {absmax}, module types≠ {types}")
    row("logits", f"{name} logits", equal, f"torch.equal {equal}, max |Δ| {(la - lb).abs().max().item():.3g}")
    row("logits", f"{name} load (s)", "info",
        f"wmap load_into ({via}) {ta:.2f} [{', '.join(f'{x:.2f}' for x in ra)}]  vs  "
        f"from_pretrained {tb:.2f} [{', '.join(f'{x:.2f}' for x in rb)}]; device memory held {gb(held_a)} vs {gb(held_b)}")
    if hasattr(store, "stats"):
        say(f"  wmap store stats: {json.dumps(store.stats())}")
    if via != "device":
        return
    del a, store, la
    free()

    def via_host():
        """The same through host memory (CPU quantizer, then a copy), once."""
        (h, _, _), th, _, held_h, _ = timed(lambda: ours(path, device, via="host"), 1, device)
        _, _, codes, absmax, types = linear4bit_diff(linear4bit_state(h), state_b)
        same = torch.equal(logits(h, device, h.config.vocab_size), lb)
        row("logits", f"{name} via host", codes == 0 and absmax == 0 and types == 0 and same,
            f"load_into(via='host') {th:.2f} s, held {gb(held_h)}; codes≠ {codes}, absmax≠ {absmax}, logits equal {same}")

    section("logits", via_host, subject=f"{name} via host")


def compare_moe(path, device, runs):
    """Section 2: one MoE checkpoint. Its three comparisons fail separately."""
    warm(path)
    name = os.path.basename(path.rstrip("/"))
    b, tb, rb, held_b, peak_b = timed(lambda: reference(path, device), runs, device)
    state_b = linear4bit_state(b)
    lb = logits(b, device, b.config.vocab_size)
    say(f"  from_pretrained: held {gb(held_b)}, torch peak {gb(peak_b)}, load {tb:.2f} s")

    def quantized_experts():
        (a, _, via), ta, ra, held_a, _ = timed(lambda: ours(path, device), runs, device)
        la = logits(a, device, a.config.vocab_size)
        row("moe", f"{name} memory", "info",
            f"experts NF4 (wmap, {via}): held {gb(held_a)}, load {ta:.2f} s [{', '.join(f'{x:.2f}' for x in ra)}]  vs  "
            f"experts bf16 (transformers+bnb): held {gb(held_b)}, torch peak {gb(peak_b)}, load {tb:.2f} s "
            f"[{', '.join(f'{x:.2f}' for x in rb)}]")
        row("moe", f"{name} logits, NF4 experts", "info",
            f"max |Δ| vs bf16 experts {(la - lb).abs().max().item():.3g} (experts quantized only on our side)")
        expert_codes(name, a, b)

    def bf16_experts():
        a, _, via = ours(path, device, quantize_experts=False)
        layers, weights, codes, absmax, types = linear4bit_diff(linear4bit_state(a), state_b)
        la = logits(a, device, a.config.vocab_size)
        equal = torch.equal(la, lb)
        row("moe", f"{name} bf16 experts", equal and codes == 0 and absmax == 0 and types == 0,
            f"quantize_experts=False ({via}): {layers} Linear4bit, codes≠ {codes}, absmax≠ {absmax}, types≠ {types}, "
            f"logits torch.equal {equal}, max |Δ| {(la - lb).abs().max().item():.3g}")

    section("moe", quantized_experts, subject=f"{name} NF4 experts")
    section("moe", bf16_experts, subject=f"{name} bf16 experts")


def expert_codes(name, a, b):
    """wmap's quantized experts against bitsandbytes' own quantize_4bit of the same bf16
    experts (the reference model keeps them bf16), 16 experts of the first 4 tensors."""
    import bitsandbytes.functional as F

    checked = differing = 0
    ea = [(n, m) for n, m in a.named_modules() if type(m).__name__ == "_Experts4bit"]
    pb = dict(b.named_parameters())
    for n, qa in ea[:4]:
        mb = pb[n]
        for e in range(min(len(qa), 16)):
            codes, st = F.quantize_4bit(mb[e].contiguous(), blocksize=qa.blocksize, quant_type="nf4")
            k = qa.shape[1] * qa.shape[2]
            mine = qa.codes[e * k // 2 : (e + 1) * k // 2].flatten()
            mine_absmax = qa.absmax[e * k // qa.blocksize : (e + 1) * k // qa.blocksize]
            differing += int((mine != codes.flatten()).sum()) + int((mine_absmax != st.absmax).sum())
            checked += 1
    row("moe", f"{name} expert codes", differing == 0 and checked > 0,
        f"{len(ea)} Experts4bit tensors; {checked} experts checked against bnb quantize_4bit, {differing} bytes/absmax differ")


def no_copy(path, device):
    """Section 3: DLPack pointers of a device load, bytes against a host load."""
    import wmap

    for quant in (None, "nf4"):
        dev = wmap.load(path, quant=quant, device=device)
        host = wmap.load(path, quant=quant)
        tensors = same_ptr = same_bytes = 0
        for name in dev:
            d, h = dev[name], host[name]
            pairs = [(d, h)] if isinstance(d, wmap.Tensor) else [(d.data, h.data), (d.scales, h.scales)]
            for td, th in pairs:
                t = torch.from_dlpack(td)
                tensors += 1
                same_ptr += t.data_ptr() == td.data_ptr and str(t.device) == td.device
                same_bytes += torch.equal(t.view(torch.uint8).flatten().cpu(), torch.from_dlpack(th.as_uint8()))
        row("nocopy", f"{os.path.basename(path)} {quant or 'bf16'} on {device}", same_ptr == tensors == same_bytes,
            f"{tensors} tensors ({type(dev).__name__}): data_ptr equal {same_ptr}, bytes equal to the host load {same_bytes}")


def bnb_interop(path, device):
    """Section 4: bitsandbytes' own kernels on wmap's codes and state."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    import wmap
    import wmap.torch as wt

    try:
        dev = wmap.load(path, quant="nf4", device=device)
    except wmap.WmapError as e:
        say(f"device load failed ({e.code}); bnb interop on a host load moved to {device}")
        dev = wmap.load(path, quant="nf4")
    host = wmap.load(path, quant="nf4")
    n = equal = matmul_ok = 0
    worst = 0.0
    for name in host:
        q = dev[name]
        if not isinstance(q, wmap.Quantized):
            continue
        codes = torch.from_dlpack(q.data).to(device)
        state = wt.quant_state(q, device=device)
        mine = F.dequantize_4bit(codes, state)
        ref = torch.from_dlpack(host.get(name)).to(device)
        n += 1
        equal += torch.equal(mine, ref)
        if len(state.shape) == 2:
            x = (torch.arange(3 * state.shape[1], device=device).reshape(3, -1) % 13 - 6).to(torch.bfloat16) / 8
            y = bnb.matmul_4bit(x, codes, quant_state=state)
            want = torch.nn.functional.linear(x, ref)
            worst = max(worst, (y.float() - want.float()).abs().max().item())
            matmul_ok += y.shape == want.shape and torch.allclose(y.float(), want.float(), rtol=1e-2, atol=1e-2)
    row("bnb", f"{os.path.basename(path)} dequantize_4bit", n > 0 and equal == n,
        f"{equal}/{n} quantized params equal store.get (bf16, bit for bit) ({type(dev).__name__})")
    row("bnb", f"{os.path.basename(path)} matmul_4bit", matmul_ok > 0, f"{matmul_ok} runs match linear(x, store.get) ; max |Δ| {worst:.3g}")


def offload_get(path, device):
    """The device store's weights manager against the host store, expert by expert."""
    import wmap

    budget = 200 << 10
    # The host store needs a weights manager too (a budget that holds everything): only a
    # manager names the experts of a stacked tensor one by one (`name[e]`).
    host = wmap.load(path, quant="nf4", offload_budget=1 << 40)
    dev = wmap.load(path, quant="nf4", device=device, offload_budget=budget)
    keys = [f"{t['name']}[{e}]" for t in wmap.plan(path)["targets"] if t.get("offload") for e in range(t["shape"][0])]
    equal = same_ptr = 0
    for k in keys:
        t = dev.get(k)
        got = torch.from_dlpack(t)
        same_ptr += got.data_ptr() == t.data_ptr
        equal += torch.equal(got.cpu(), torch.from_dlpack(host.get(k)))
        del got, t
    for g in dev.groups()[:4]:
        dev.prefetch(g)
    s = dev.stats()
    ok = equal == len(keys) == same_ptr and s["peak_group_bytes"] <= budget and s["misses"] > 0
    row("offload", f"{os.path.basename(path)} get", ok,
        f"{equal}/{len(keys)} experts equal the host store's, {same_ptr} without a copy; {s['hits']} hits, "
        f"{s['misses']} misses, {s['bytes_moved'] / 1e6:.2f} MB moved, group peak {s['peak_group_bytes'] / 1e3:.1f} kB "
        f"of {budget / 1e3:.0f} kB, {s['waited_seconds'] * 1e3:.1f} ms waited ({type(dev).__name__})")


def offload_train(path, device, steps):
    """examples/moe_offload_train.py in its own process (it sets deterministic cuBLAS)."""
    cmd = [sys.executable, os.path.join(ROOT, "examples", "moe_offload_train.py"), path, "--device", device,
           "--steps", str(steps)]
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in (p.stdout + p.stderr).splitlines():
        if LOG:
            LOG.write(line + "\n")
    lines = p.stdout.splitlines()
    equal = next((x for x in lines if x.startswith("loss curves equal")), "no verdict")
    tail = [x for x in lines if x.startswith(("offloaded ", "resident "))][-2:]
    for x in lines[-4:]:
        say("   ", x)
    if p.returncode not in (0, 1):
        say(p.stderr[-3000:])
    row("offload", f"{os.path.basename(path)} train", p.returncode == 0,
        f"{equal}; {time.time() - t:.0f} s; " + " | ".join(" ".join(x.split()) for x in tail))


def ensure(path, how, device):
    if os.path.exists(os.path.join(path, "config.json")):
        return True
    if not device.startswith("cuda"):
        return False
    t = time.time()
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_peers.py"), how, path], check=True)
    say(f"made {path} in {time.time() - t:.0f} s")
    return True


def main():
    global LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args()
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        LOG = open(os.path.join(out, "gpu_python.log"), "w")
    import bitsandbytes as bnb
    import transformers

    import wmap

    dev = args.device
    name = dev
    if dev.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(dev))
    say(f"torch {torch.__version__}, transformers {transformers.__version__}, bitsandbytes {bnb.__version__}, "
        f"wmap cuda_available {wmap.cuda_available()}, device {name}")
    ckpt, moe = os.environ.get("CKPT", "/tmp/llama8b"), os.environ.get("MOE", "/tmp/qwen3moe12")
    t0 = time.time()
    section("nocopy", no_copy, os.path.join(FIX, "llama"), dev)
    section("nocopy", no_copy, os.path.join(FIX, "qwen3_moe"), dev)
    section("bnb", bnb_interop, os.path.join(FIX, "qwen3_moe"), dev)
    section("logits", compare_logits, os.path.join(FIX, "llama"), dev, args.runs)
    section("moe", compare_moe, os.path.join(FIX, "qwen3_moe"), dev, args.runs)
    if dev.startswith("cuda"):
        section("offload", offload_get, os.path.join(FIX, "qwen3_moe"), dev)
    section("offload", offload_train, os.path.join(FIX, "qwen3_moe"), dev, 10)
    if not args.skip_large:
        if ensure(ckpt, "make", dev):
            section("logits", compare_logits, ckpt, dev, args.runs)
        if ensure(moe, "make-moe", dev):
            section("moe", compare_moe, moe, dev, min(args.runs, 2))
            section("offload", offload_train, moe, dev, 5)
    say(f"\n== summary ({time.time() - t0:.0f} s)")
    width = max(len(r[1]) for r in ROWS) if ROWS else 10
    for sec, subject, result, figures in ROWS:
        say(f"{sec:<7} {subject:<{width}} {result:<5} {figures}")
    if out:
        with open(os.path.join(out, "gpu_python.json"), "w") as f:
            json.dump(ROWS, f, indent=1)
    sys.exit(1 if any(r[2] in ("FAIL", "ERROR") for r in ROWS) else 0)


if __name__ == "__main__":
    main()
