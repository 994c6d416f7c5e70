#!/usr/bin/env bash
# On the GPU machine, from the repository root, with .gpu/ made by scripts/build-gpu.sh:
# the load of the Llama-3.1-8B-shaped checkpoint ($CKPT, made by scripts/bench_peers.py when
# absent) under other staging-ring shapes (WMAP_STAGING), parallel read sizes
# (WMAP_READ_SLICE_KIB) and reader threads (RAYON_NUM_THREADS): the figures behind the
# defaults (3 x 256 MiB, 512 KiB, 16 threads). Builds nothing; prints a short table last.
set -uo pipefail
OUT=${OUT:-/tmp/wmap-sweep}
CKPT=${CKPT:-/tmp/llama8b}
mkdir -p "$OUT"
[ -f "$CKPT/config.json" ] || python3 scripts/bench_peers.py make "$CKPT" 2>&1 | grep made
cat "$CKPT"/*.safetensors > /dev/null
run() {  # label, then env assignments
  local label=$1; shift
  env "$@" .gpu/bin/wmapc load "$CKPT" --device cuda --quant nf4 --repeat 5 --quiet > "$OUT/$label.log" 2>&1
  printf '%-28s %s | %s\n' "$label" \
    "$(grep -E '^load [0-9]' "$OUT/$label.log" | sed -E 's/^load ([0-9.]+ s).*setup ([0-9.]+ s).*/load \1, setup \2/')" \
    "$(grep -E '^load thread' "$OUT/$label.log" | sed -E 's/.*\(([0-9.]+ GB\/s) while filling.*/ring filled at \1/')"
}
{
  for s in 3x256 4x128 3x128 6x64 4x512; do run "ring $s" WMAP_STAGING=$s; done
  for k in 4096 1024 512 256; do run "read $k KiB" WMAP_READ_SLICE_KIB=$k; done
  for t in 8 24 32; do run "512 KiB, $t threads" RAYON_NUM_THREADS=$t; done
} | tee "$OUT/summary.txt"
echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); median of 5 each)"
cat "$OUT/summary.txt"
