"""SASS check of the warp-specialized wgmma kernels (device machine: needs cuobjdump).

    python3 bench/device/sass_check_ws.py build/cuda-harness/libonnxq_cuda_harness.so

For every TMA instance of an ILV >= 1 WsCfg (no stream-K) prints the SASS instruction count, the
HGMMA / WARPGROUP.DEPBAR counts and how many HGMMAs are followed (within 2 instructions) by a
WARPGROUP.DEPBAR, i.e. serialized by ptxas (see ops/cuda/NOTES.md: must be 0).
"""

import re
import subprocess
import sys

out = subprocess.run(["cuobjdump", "-sass", "-arch", "sm_90a", sys.argv[1]], capture_output=True, text=True).stdout
for f in out.split("Function : ")[1:]:
    name = f.split("\n")[0]
    m = re.search(r"WsCfgILi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)EEELb1ELb1", name)
    if not m or m.group(8) == "0" or m.group(9) != "0":
        continue
    lines = f.split("\n")
    hg = [i for i, line in enumerate(lines) if "HGMMA" in line]
    dep = [i for i, line in enumerate(lines) if "WARPGROUP.DEPBAR" in line]
    after = sum(1 for i in hg if any("WARPGROUP.DEPBAR" in lines[j] for j in range(i + 1, min(i + 3, len(lines)))))
    n_instr = sum(1 for line in lines if re.search(r"/\*[0-9a-f]{4,}\*/", line))
    print(f"BT{m.group(1)} SPLIT{m.group(3)} STAGES{m.group(4)} KT{m.group(5)} ILV{m.group(8)}: {n_instr} instr, "
          f"{len(hg)} HGMMA, {len(dep)} DEPBAR, {after} DEPBAR right after an HGMMA")
