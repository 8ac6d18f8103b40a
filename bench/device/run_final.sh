#!/bin/bash
# Final device call: install onnxruntime-gpu from the carried parts (DEVICE.md), run the ORT
# tests and the ORT stack benchmark, then the kernel tests and the kernel benchmark.
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-bench/results}
mkdir -p /tmp/ortgpu && cp .ortgpu/partad /tmp/ortgpu/ && bash .ortgpu/install-ort-gpu.sh > "$out/ort_install.log" 2>&1
tail -2 "$out/ort_install.log"
export ONNXQ_OPS_CUDA_LIB=$PWD/build/cuda-ops/libonnxq_ops_cuda.so
PYTHONPATH=/tmp/ortsite timeout 240 python3 -m pytest -q -p no:cacheprovider tests/ops_cuda/test_ort_cuda_op.py > "$out/pytest_ort.log" 2>&1
tail -3 "$out/pytest_ort.log"
PYTHONPATH=/tmp/ortsite timeout 200 python3 bench/device/ort_stack_bench.py --out "$out/ort_stack.json" 2>&1 | tail -5
bash bench/device/run_cuda_int4.sh > "$out/run.log" 2>&1
grep -E "passed|failed|rror" "$out/pytest_cuda.log" | tail -2
grep -A40 "^| K×N" "$out/bench_cuda.log"
