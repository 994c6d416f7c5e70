#!/usr/bin/env bash
# The version-2 quantize kernels against the version-1 ones, on the CPU, no GPU needed:
# gen.py pastes kernels/common.cuh, bnb4.cu, bnb4_v2.cu and fp8.cu together with the
# inline PTX replaced by C++ (the E4M3 conversion as cuda_fp8.hpp's host emulation
# describes the hardware's), shim.h runs each CTA as 256 threads with barriers for
# __syncthreads and warp shuffles, and test.cpp compares v2 with v1 byte for byte (NF4
# and FP4 quantize and dequantize, FP8 128x128 blocks; random and special values; odd
# sizes; quantize grids smaller than the tile count, so CTAs stride). Quick by default; --full
# runs every size, block size and grid (minutes: one OS thread per CUDA thread).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 "$here/gen.py" "$tmp/kernels_emu.h"
g++ -std=c++20 -O1 -ffp-contract=off -fno-fast-math -w -pthread -I"$here" -DKERNELS="\"$tmp/kernels_emu.h\"" \
  "$here/test.cpp" -o "$tmp/test"
if [ "${1:-}" = "--full" ]; then "$tmp/test"; else "$tmp/test" quick; fi
