#!/bin/bash
# Nsight Compute summaries of the kernels on a few shapes (device machine, repo root).
#   bash bench/device/ncu_cuda_int4.sh   -> $OUT/ncu_*.txt plus a short digest on stdout
out=${OUT:-bench/results}
sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section SchedulerStats"
metrics="--metrics smsp__inst_executed.sum,dram__bytes_read.sum,regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio"
run() {  # name kernel-regex args...
  local name=$1 kre=$2; shift 2
  ncu --kernel-name regex:$kre --launch-skip 3 --launch-count 1 $sections $metrics \
    python3 bench/device/profile_cuda_int4.py "$@" > "$out/ncu_$name.txt" 2>&1
  echo "== $name: $*"
  grep -E "^ +(Duration|DRAM Throughput|Issued Warp Per Scheduler|Achieved Occupancy|smsp__inst_executed.sum|dram__bytes_read.sum)" "$out/ncu_$name.txt"
  grep -E "issue_stalled" "$out/ncu_$name.txt" | awk '$NF+0 > 0.3 {sub(/smsp__average_warps_issue_stalled_/, ""); sub(/_per_issue_active.ratio/, ""); print "   stall", $1, $NF}'
}
run skinny_m1 skinny --k 11008 --n 4096 --m 1 --path 1
run skinny_m16 skinny --k 4096 --n 4096 --m 16 --path 1
run gemm_m64 gemm --k 4096 --n 4096 --m 64 --path 2 --config ${CFG64:-2}
run gemm_m256 gemm --k 4096 --n 4096 --m 256 --path 2 --config ${CFG256:-5}
