#!/usr/bin/env bash
# Builds, on this (GPU-less) machine, everything scripts/gpu-test.sh runs on the GPU machine,
# into the git-ignored .gpu/ folder: wmapc, the GPU test binaries, the GPU benchmark, the
# page-cache fill benchmark, a stripped bitsandbytes for the peer figures, and our exports
# of the llama fixture.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/bin
cargo build --release --features cuda --bin wmapc
cp target/release/wmapc .gpu/bin/
# Test and bench executables: ask cargo where it put them.
cargo test --release --features cuda --test gpu --test kernels --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys,shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], ".gpu/bin/test-" + m["target"]["name"])'
cargo bench --features cuda --bench gpu --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys,shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bench"]:
        shutil.copy(m["executable"], ".gpu/bin/bench-" + m["target"]["name"])'
cargo build --release --features cuda --example gpu_load
cp target/release/examples/gpu_load .gpu/bin/example-gpu_load
# The page-cache fill benchmark (scripts/gpu-fill-bench.sh); libcuda is loaded at run time.
cc -O2 -pthread -o .gpu/bin/fill-bench scripts/fill_bench.c -ldl
if [ -d ../shared/tools/py-bitsandbytes-0.50.2-cu130 ]; then
  rm -rf .gpu/bnb && cp -r ../shared/tools/py-bitsandbytes-0.50.2-cu130 .gpu/bnb
fi
rm -rf .gpu/exports
for q in nf4 nf4-dq fp4; do
  .gpu/bin/wmapc load tests/fixtures/hf/llama --quiet --quant "$q" --out ".gpu/exports/$q" >/dev/null
done
strip --strip-debug .gpu/bin/*
ls -la .gpu/bin
du -sh .gpu
