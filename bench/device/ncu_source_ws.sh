#!/bin/bash
# Per-SASS-instruction warp-stall samples of one wgmma config (device machine, repo root):
#   bash bench/device/ncu_source_ws.sh NAME K N M CONFIG  -> $OUT/src_NAME.csv (+ ncu_NAME.txt summary)
out=${OUT:-bench/results}
name=$1 k=$2 n=$3 m=$4 cfg=$5
ncu --kernel-name regex:wgmma_ws --launch-skip 3 --launch-count 1 \
  --section WarpStateStats --section SourceCounters --section SpeedOfLight --section SchedulerStats \
  -o "$out/rep_$name" -f python3 bench/device/profile_cuda_int4.py --k "$k" --n "$n" --m "$m" --path 4 --config "$cfg" \
  > "$out/ncu_$name.log" 2>&1
ncu --import "$out/rep_$name.ncu-rep" --print-summary none > "$out/ncu_$name.txt" 2>&1
ncu --import "$out/rep_$name.ncu-rep" --page source --print-source sass --csv > "$out/src_$name.csv" 2>&1
rm -f "$out/rep_$name.ncu-rep"
grep -E "Duration|Issued Warp|Eligible|Active Warps|Tensor|Stall" "$out/ncu_$name.txt" | head -20
wc -c "$out/src_$name.csv"
