#!/usr/bin/env bash
# On the GPU machine, from the repository root, with .gpu/ made by scripts/build-gpu.sh:
# the quantize kernels of both generations (v1, v2; see KernelVersion in src/cuda/device.rs)
# checked against the CPU reference, timed by bench-gpu, and profiled one launch at a time
# with Nsight Compute (DRAM throughput as a share of peak, kernel duration). Builds
# nothing; writes logs under $OUT (or /tmp/wmap-ncu); prints a short table last.
# Nsight Compute runs with --clock-control none: the card's clocks are left as found.
set -uo pipefail
OUT=${OUT:-/tmp/wmap-ncu}
mkdir -p "$OUT"
NCU=${NCU:-$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader | tee "$OUT/device.txt"

echo "== correctness: both generations against the CPU reference"
.gpu/bin/test-gpu --include-ignored --nocapture --test-threads 1 kernels_match special_values 2>&1 \
  | tee "$OUT/test-kernels.log" | grep -E -A12 "checks|byte-identical|panicked|FAILED|test result" | head -60
# The loader and the weight manager through the fallback, v1 (scripts/gpu-test.sh runs
# them through the default, v2).
WMAP_KERNELS=v1 .gpu/bin/test-gpu --include-ignored --nocapture --test-threads 1 2>&1 \
  | tee "$OUT/test-gpu-v1.log" | grep -E -A6 "panicked|FAILED|test result" | head -40

echo "== bench-gpu (CUDA events; both generations)"
.gpu/bin/bench-gpu 2>&1 | tee "$OUT/bench-gpu.log"

echo "== Nsight Compute: ${NCU:-not found}"
if [ -n "$NCU" ]; then
  WMAP_BENCH_REPS=3 "$NCU" --clock-control none --csv --page raw \
    --metrics dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum \
    -k regex:'^(bnb4_quantize|bnb4_dequantize|fp8_quantize_blocks)' \
    .gpu/bin/bench-gpu > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
  echo "ncu exit $?; $(wc -l < "$OUT/ncu.csv") lines in $OUT/ncu.csv"
  tail -3 "$OUT/ncu.err"
fi

echo "== summary ($(head -1 "$OUT/device.txt"))"
grep -h -E "test result|byte-identical" "$OUT/test-kernels.log" "$OUT/test-gpu-v1.log"
grep -h -E "nf4 quantize|nf4 dequantize|fp8 128" "$OUT/bench-gpu.log"
# Median duration per kernel (bench-gpu's tensor: 14336 x 4096 bf16 elements).
[ -s "$OUT/ncu.csv" ] && python3 - "$OUT/ncu.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(l for l in open(sys.argv[1]) if l.startswith('"')))
if len(rows) < 3:
    sys.exit("ncu: no kernel rows")
head = rows[0]
k, t, d = head.index("Kernel Name"), head.index("gpu__time_duration.sum"), head.index("dram__throughput.avg.pct_of_peak_sustained_elapsed")
# The raw page's second row gives units (ncu picks ns, us or ms); without it, ns.
has_units = not rows[1][t].replace(",", "").replace(".", "").isdigit()
scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(rows[1][t] if has_units else "ns", float("nan"))
by = {}
for r in rows[2 if has_units else 1:]:
    by.setdefault(r[k], []).append((float(r[t].replace(",", "")) * scale, float(r[d].replace(",", ""))))
n = 14336 * 4096
print(f"{'ncu kernel':<28} {'launches':>8} {'us':>9} {'G el/s':>8} {'DRAM %':>7}")
for name, v in sorted(by.items()):
    us = statistics.median(x for x, _ in v)
    print(f"{name:<28} {len(v):>8} {us:>9.1f} {n / us / 1e3:>8.0f} {statistics.median(y for _, y in v):>7.1f}")
PY
