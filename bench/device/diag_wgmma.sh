#!/bin/bash
# Diagnostics of the wgmma kernel on the device (repo root): SASS of one configuration and
# Nsight Compute speed-of-light / warp-state / source-counter sections for it.
#   CFG=3 M=64 SASS_KEY=WgCfgILi64ELi1ELi4ELi7ELi1EEELb1E bash bench/device/diag_wgmma.sh
#   -> $OUT/sass_wgmma.txt, $OUT/ncu_wg.txt (SASS_KEY: part of the mangled kernel name)
out=${OUT:-bench/results}
lib=build/cuda-harness/libonnxq_cuda_harness.so
cuobjdump -sass -arch sm_90a "$lib" > "$out/sass_all.txt" 2>&1 || echo "no cuobjdump"
python3 - "$out/sass_all.txt" "$out/sass_wgmma.txt" "${SASS_KEY:-WgCfgILi64ELi1ELi4ELi7ELi1EEELb1E}" <<'PY'
import sys
txt = open(sys.argv[1]).read().split("Function : ")
keep = [f for f in txt if "wgmma_f16_kernel" in f.split("\n")[0] and sys.argv[3] in f.split("\n")[0]]
open(sys.argv[2], "w").write("\n".join(keep))
print("sass functions kept:", len(keep))
PY
ncu --kernel-name regex:wgmma --launch-skip 3 --launch-count 1 --section SpeedOfLight --section WarpStateStats \
  --section SourceCounters --section Occupancy --print-details all \
  python3 bench/device/profile_cuda_int4.py --k 4096 --n 4096 --m ${M:-64} --path 4 --config ${CFG:-3} > "$out/ncu_wg.txt" 2>&1
rm -f "$out/sass_all.txt"
grep -E "Duration|Throughput|Stall|stall|Warp Cycles|Achieved Occupancy|Registers" "$out/ncu_wg.txt" | head -40
