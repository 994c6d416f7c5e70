#!/usr/bin/env bash
# On the GPU machine, with .gpu/ made by scripts/build-gpu.sh: how fast 16 threads copy the
# page-cached 8B checkpoint into a staging ring, unbroken or in fills the threads wait for
# together, with and without device copies running meanwhile (BENCHMARKS.md, "filling the
# staging ring"): into a ring of the loader's old size and of its size now, with pread, and
# through a mapping with plain and non-temporal copies. THREADS sets the readers (16).
# Three rounds; prints a short table last.
set -uo pipefail
CKPT=${CKPT:-/tmp/llama8b}
[ -f "$CKPT/config.json" ] || python3 scripts/bench_peers.py make "$CKPT" > /dev/null 2>&1
FILES=$(ls "$CKPT"/*.safetensors)
cat $FILES > /dev/null
LOG=$(mktemp) || exit 1
trap 'rm -f -- "$LOG"' EXIT  # only the temporary file this script made
run() {  # DMA(0|1) RING_MIB CHUNK_MIB(all|N) MODE
  env RING_MIB=$2 $([ "$3" != all ] && echo CHUNK_MIB=$3) $([ "$1" = 1 ] && echo DMA=1) \
    .gpu/bin/fill-bench $4 ${THREADS:-16} $FILES 2>&1 | sed "s/^/dma $1: /"
}
# 768 MiB: the loader's ring until 2026-12-02 (3 x 256 MiB); 128 MiB: its ring since
# (2 x 64 MiB), small enough to stay in the host's last-level cache.
for round in 1 2 3; do
  for ring in 768 128; do
    for dma in 0 1; do run $dma $ring all pread; done
    run 1 $ring 64 pread
  done
  run 1 768 all mmap
  run 1 768 all mmapnt
done | tee "$LOG"
echo "== summary: GB/s over three rounds"
grep -E "^dma [01]: (pread|mmap)" "$LOG" | sed -E 's/^dma ([01]): (\w+) .* ring ([0-9]+) MiB, fills of ([^:]*):.* ([0-9.]+) GB\/s$/\2, ring \3 MiB, fills of \4, device copies \1: \5/' \
  | sort -s -t: -k1,1 | awk -F': ' '{a[$1] = a[$1] " " $2} END {for (k in a) print k ":" a[k]}' | sort
