#!/bin/bash
# One device call: check the CUDA kernels and time them. From the repo root on the GPU box:
#   bash bench/device/run_cuda_int4.sh [pytest-args...]
# Uses build/cuda-harness/ if carried, else builds it (nvcc). Logs and JSON go to $OUT
# (or bench/results/ when OUT is unset).
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-bench/results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv
[ -f build/cuda-harness/libonnxq_cuda_harness.so ] || sh bench/device/build_cuda_harness.sh || exit 1
python3 -c "import onnxq" 2>&1 | tail -1
timeout ${TEST_TIMEOUT:-300} python3 -m pytest -q -p no:cacheprovider tests/ops_cuda "$@" 2>&1 | tee "$out/pytest_cuda.log" | tail -40
timeout ${BENCH_TIMEOUT:-300} python3 bench/bench_cuda_int4.py --out "$out/cuda_int4.json" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench_cuda.log"
