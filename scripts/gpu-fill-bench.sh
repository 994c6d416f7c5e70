#!/usr/bin/env bash
# On the GPU machine, with .gpu/ made by scripts/build-gpu.sh: how fast 16 threads copy the
# page-cached 8B checkpoint into a staging ring, unbroken or in fills the threads wait for
# together, with and without device copies running meanwhile (BENCHMARKS.md, "filling the
# staging ring"). THREADS sets the readers (16). Three rounds; prints a short table last.
set -uo pipefail
CKPT=${CKPT:-/tmp/llama8b}
[ -f "$CKPT/config.json" ] || python3 scripts/bench_peers.py make "$CKPT" > /dev/null 2>&1
FILES=$(ls "$CKPT"/*.safetensors)
cat $FILES > /dev/null
LOG=$(mktemp) || exit 1
trap 'rm -f -- "$LOG"' EXIT  # only the temporary file this script made
for round in 1 2 3; do
  for chunk in all 64 8; do
    for dma in 0 1; do
      env $([ "$chunk" != all ] && echo CHUNK_MIB=$chunk) $([ $dma = 1 ] && echo DMA=1) \
        .gpu/bin/fill-bench pread ${THREADS:-16} $FILES 2>&1 | sed "s/^/dma $dma: /"
    done
  done
  DMA=1 .gpu/bin/fill-bench mmap ${THREADS:-16} $FILES 2>&1 | sed "s/^/dma 1: /"
done | tee "$LOG"
echo "== summary: GB/s over three rounds"
grep -E "^dma [01]: (pread|mmap)" "$LOG" | sed -E 's/^dma ([01]): (\w+) .*fills of ([^:]*):.* ([0-9.]+) GB\/s$/\2, fills of \3, device copies \1: \4/' \
  | sort -s -t: -k1,1 | awk -F': ' '{a[$1] = a[$1] " " $2} END {for (k in a) print k ":" a[k]}' | sort
