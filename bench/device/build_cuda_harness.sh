#!/bin/sh
# Build the ctypes kernel harness (libonnxq_cuda_harness.so) straight with nvcc: no CMake,
# no ORT headers, no GPU needed (sm_80 + sm_90a machine code). Run from the repo root:
#   sh bench/device/build_cuda_harness.sh [OUT_DIR]   (default build/cuda-harness)
# Prints the library path on the last line. ptxas resource usage goes to OUT_DIR/ptxas.log.
set -eu
out=${1:-build/cuda-harness}
src=ops/cuda
mkdir -p "$out"
nvcc -std=c++17 -O3 -shared -Xcompiler -fPIC -Xcompiler -fvisibility=hidden \
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a -DONNXQ_HAVE_SM90A=1 \
  -Xptxas -v -I "$src" -I ops/include "$src/block_int4_kernels.cu" "$src/harness_api.cc" \
  -Xlinker --version-script="$src/exports_harness.map" \
  -o "$out/libonnxq_cuda_harness.so" 2> "$out/ptxas.log" || { cat "$out/ptxas.log" >&2; exit 1; }
grep -i "spill\|error" "$out/ptxas.log" | grep -v " 0 bytes spill" >&2 || true
# reference kernels for the bench (empty-kernel launch floor, plain stream read); not part of onnxq
nvcc -std=c++17 -O3 -shared -Xcompiler -fPIC -Xcompiler -fvisibility=hidden \
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a \
  bench/device/floor_kernels.cu -o "$out/libonnxq_cuda_floor.so" || echo "floor kernels not built" >&2
echo "$out/libonnxq_cuda_harness.so"
