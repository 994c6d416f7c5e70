#!/usr/bin/env bash
# On the GPU machine, from the repository root, with .gpu/ made by scripts/build-gpu.sh:
# all GPU tests, the kernel and loader benchmarks with the peers on the same card, and
# the export check. Builds nothing. Writes logs under $OUT (or /tmp/wmap-gpu); prints a
# short table last.
set -uo pipefail
OUT=${OUT:-/tmp/wmap-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/.gpu/bnb HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# Wheels the machine lacks (nvidia-modelopt and its pydantic, for the NVFP4 goldens), if carried.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
CKPT=${CKPT:-/tmp/llama8b}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"

echo "== tests"
.gpu/bin/test-kernels --nocapture 2>&1 | tee "$OUT/test-kernels.log" | grep -E "compiled|test result"
.gpu/bin/test-gpu --include-ignored --nocapture --test-threads 1 2>&1 | tee "$OUT/test-gpu.log" | grep -E "device|checks|bytes|match|ordering|panicked|test result"

echo "== goldens: regenerated with bitsandbytes, transformers and ModelOpt, compared to the committed ones"
mkdir -p "$OUT/goldens"
python3 scripts/make_goldens.py "$OUT/goldens" 2>&1 | grep -v -i warn | tee "$OUT/goldens.log"
python3 scripts/make_mean_goldens.py "$OUT/goldens/torch_mean.safetensors" 2>&1 | grep -v -i warn | tee -a "$OUT/goldens.log"
# Tensor by tensor (the file's metadata records versions, which may move).
python3 - "$OUT/goldens" tests/fixtures/golden <<'PY' 2>&1 | tee -a "$OUT/goldens.log"
import sys
from safetensors.torch import load_file
import os
for f in ("bnb_4bit", "scales", "torch_mean"):
    if not os.path.exists(f"{sys.argv[2]}/{f}.safetensors"):
        print(f"golden {f}: not committed yet (made: {sys.argv[1]}/{f}.safetensors)"); continue
    try:
        new, old = load_file(f"{sys.argv[1]}/{f}.safetensors"), load_file(f"{sys.argv[2]}/{f}.safetensors")
    except Exception as e:
        print(f"golden {f}: NOT MADE ({type(e).__name__})"); continue
    bad = [k for k in old if k not in new or not new[k].equal(old[k])] + [k for k in new if k not in old]
    print(f"golden {f}: identical ({len(old)} tensors)" if not bad else f"golden {f}: DIFFERS in {len(bad)} of {len(old)}: {bad[:6]}")
    for k in bad[:4]:
        if k in new and k in old:
            a, b = new[k], old[k]
            d = (a.double() - b.double()).abs().max().item() if a.shape == b.shape else "shape"
            print(f"  {k}: new {a.dtype} {tuple(a.shape)} {a.flatten()[:3].tolist()}, committed {b.dtype} {tuple(b.shape)} {b.flatten()[:3].tolist()}, max |diff| {d}")
PY

echo "== library example"
.gpu/bin/example-gpu_load tests/fixtures/hf/qwen3_moe nf4 2>&1 | tee "$OUT/example.log" | head -8

echo "== kernels"
.gpu/bin/bench-gpu 2>&1 | tee "$OUT/bench-gpu.log"
python3 scripts/bench_peers.py kernels 2>&1 | grep -v -i warn | tee "$OUT/peer-kernels.log"

echo "== P1: Llama-3.1-8B-shaped load + NF4"
[ -f "$CKPT/config.json" ] || python3 scripts/bench_peers.py make "$CKPT" 2>&1 | grep -v -i warn | tee "$OUT/make.log"
# Wait for a just-written checkpoint's writeback (loads measured in the minute after making
# it ran up to a third slower on a 2026-12-02 machine), then warm the page cache.
sync
cat "$CKPT"/*.safetensors > /dev/null
.gpu/bin/wmapc load "$CKPT" --device cuda --quant nf4 --repeat 9 --quiet 2>&1 | tee "$OUT/wmap-load.log"
.gpu/bin/wmapc load "$CKPT" --device cuda --quant fp8-block --repeat 3 --quiet 2>&1 | tee "$OUT/wmap-load-fp8.log"
.gpu/bin/wmapc load "$CKPT" --device cuda --repeat 3 --quiet 2>&1 | tee "$OUT/wmap-load-bf16.log"
python3 scripts/bench_peers.py load "$CKPT" 2>&1 | grep -E "^peer" | tee "$OUT/peer-load.log"
# What bounds P1: the page-cache fill rate, alone and beside device copies.
CKPT="$CKPT" bash scripts/gpu-fill-bench.sh 2>&1 | tee "$OUT/fill-bench.log"
# The whole process as a user runs it: the kernel cache cold once, then warm.
wall() { python3 -c 'import resource, subprocess, sys, time
t = time.monotonic(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(f"whole process: wall {time.monotonic() - t:.3f} s, max RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9:.2f} GB;",
      " ".join(l for l in r.stdout.splitlines() if l.startswith("load ")).split(";")[0]); sys.exit(r.returncode)' "$@"; }
export WMAP_KERNEL_CACHE="$OUT/kernel-cache"
for i in 1 2 3 4 5; do wall .gpu/bin/wmapc load "$CKPT" --device cuda --quant nf4 --quiet; done 2>&1 | tee "$OUT/whole.log"
unset WMAP_KERNEL_CACHE

echo "== P6 / P9: MoE experts and offload"
MOE=${MOE:-/tmp/qwen3moe12}
# Made only where nothing exists yet; MADE_MOE marks that this run made it, so only then may
# it be removed below (never a folder that was there before, whatever it holds).
MADE_MOE=
if [ ! -e "$MOE" ]; then
  python3 scripts/bench_peers.py make-moe "$MOE" 2>&1 | grep -v -i warn | tee "$OUT/make-moe.log"
  MADE_MOE=1
fi
sync; cat "$MOE"/*.safetensors > /dev/null
.gpu/bin/wmapc load "$MOE" --device cuda --quant nf4 --repeat 3 --quiet 2>&1 | tee "$OUT/wmap-moe.log"
python3 -c 'import resource, subprocess, sys, time
t = time.monotonic(); r = subprocess.run(sys.argv[1:])
print(f"offload run: wall {time.monotonic() - t:.2f} s, max RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9:.2f} GB"); sys.exit(r.returncode)' .gpu/bin/wmapc load "$MOE" --device cuda --quant nf4 --offload-budget 1GiB --quiet 2>&1 | tee "$OUT/wmap-moe-offload.log"
python3 scripts/bench_peers.py load "$MOE" 2>&1 | grep -E "^peer" | tee "$OUT/peer-moe.log"
.gpu/bin/wmapc bench-offload --trace cyclic 2>&1 | tee "$OUT/offload-cyclic.log"
.gpu/bin/wmapc bench-offload --trace routed 2>&1 | tee "$OUT/offload-routed.log"

echo "== many tensors: Qwen3-30B-A3B shape with 24 of its 48 layers (≈ 31 GB, ≈ 9.4k tensors)"
MOE24=${MOE24:-/tmp/qwen3moe24}
# The disk holds the 8B and one MoE checkpoint at a time: the 12-layer one goes if this run made it.
[ -n "$MADE_MOE" ] && rm -rf -- "$MOE"
[ -e "$MOE24" ] || python3 scripts/bench_peers.py make-moe "$MOE24" 24 2>&1 | grep -v -i warn | tee "$OUT/make-moe24.log"
sync; cat "$MOE24"/*.safetensors > /dev/null
.gpu/bin/wmapc load "$MOE24" --device cuda --quant nf4 --repeat 5 --quiet 2>&1 | tee "$OUT/wmap-moe24.log"
# The same tensor count with 64-wide tensors: load time over tensors is the fixed per-tensor cost.
TINY=${TINY:-/tmp/qwen3moe24-tiny}
[ -e "$TINY" ] || python3 scripts/bench_peers.py make-moe-tiny "$TINY" 2>&1 | grep -v -i warn | tee "$OUT/make-tiny.log"
.gpu/bin/wmapc load "$TINY" --device cuda --quant nf4 --repeat 9 --quiet 2>&1 | tee "$OUT/wmap-tiny.log"

echo "== cold reads: the 8B checkpoint out of the page cache, against the disk's O_DIRECT rate"
evict() {  # drop the files' pages: the kernel's knob when writable, else fadvise per file
  sync; { echo 1 > /proc/sys/vm/drop_caches; } 2>/dev/null || python3 -c 'import os, sys
for f in sys.argv[1:]:
    fd = os.open(f, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"
}
evict "$CKPT"/*.safetensors
python3 - "$CKPT" <<'PY' 2>&1 | tee "$OUT/cold-dd.log"
import glob, os, subprocess, sys, time
files = sorted(glob.glob(f"{sys.argv[1]}/*.safetensors")); n = sum(os.path.getsize(f) for f in files)
t = time.monotonic()
for f in files:
    subprocess.run(["dd", f"if={f}", "of=/dev/null", "bs=64M", "iflag=direct"], check=True, capture_output=True)
s = time.monotonic() - t
print(f"disk O_DIRECT sequential (dd, one file at a time): {n / 1e9:.2f} GB in {s:.2f} s, {n / s / 1e9:.2f} GB/s")
PY
evict "$CKPT"/*.safetensors
.gpu/bin/wmapc load "$CKPT" --device cuda --quiet 2>&1 | tee "$OUT/cold-wmap.log"
evict "$CKPT"/*.safetensors
.gpu/bin/wmapc load "$CKPT" --device cuda --quant nf4 --quiet 2>&1 | tee "$OUT/cold-wmap-nf4.log"

echo "== export check"
python3 scripts/verify_export.py tests/fixtures/hf/llama .gpu/exports/nf4:nf4 .gpu/exports/nf4-dq:nf4:dq \
  .gpu/exports/fp4:fp4 2>&1 | grep -v -i -E "warn|Loading weights" | tee "$OUT/verify.log"

echo "== summary ($(head -1 "$OUT/device.txt"))"
grep -h -E "test result" "$OUT"/test-*.log
grep -h "ordering:" "$OUT/test-gpu.log" | sed 's/^test .* \.\.\. //'
grep -h "^golden" "$OUT/goldens.log"
grep -h -E "nf4 quantize|nf4 dequantize|fp8 128|copy" "$OUT/bench-gpu.log"
grep -h -E "peer|pinned" "$OUT/peer-kernels.log"
runs() { echo "  each run in order: $(sed -n -E 's/^run [0-9]+ of [0-9]+: load ([0-9.]+) s.*/\1/p' "$1" | tr '\n' ' ')"; }
grep -h -E "^load|loaded" "$OUT/wmap-load.log"; runs "$OUT/wmap-load.log"
cat "$OUT/peer-load.log"; cat "$OUT/whole.log"
sed -n '/== summary/,$p' "$OUT/fill-bench.log"
grep -h -E "^load|loaded" "$OUT/wmap-moe.log"; cat "$OUT/peer-moe.log"; tail -2 "$OUT/wmap-moe-offload.log"
tail -3 "$OUT/offload-cyclic.log"; tail -2 "$OUT/offload-routed.log"
grep -h -E "^load|loaded" "$OUT/wmap-moe24.log"; runs "$OUT/wmap-moe24.log"
grep -h -E "^load|loaded" "$OUT/wmap-tiny.log"
grep -h "O_DIRECT" "$OUT/cold-dd.log"; grep -h -E "^load" "$OUT/cold-wmap.log" "$OUT/cold-wmap-nf4.log"
tail -4 "$OUT/verify.log"
