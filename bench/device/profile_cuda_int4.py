"""Launch one kernel configuration a few times (no graph) for Nsight Compute:

    ncu --kernel-name regex:skinny --launch-skip 3 --launch-count 1 --section SpeedOfLight \
        python3 bench/device/profile_cuda_int4.py --k 11008 --n 4096 --m 1 --path 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from bench.device.cuda_int4_harness import Harness, find_or_build_lib  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--k", type=int, default=4096)
ap.add_argument("--n", type=int, default=4096)
ap.add_argument("--m", type=int, default=1)
ap.add_argument("--bs", type=int, default=128)
ap.add_argument("--path", type=int, default=0)
ap.add_argument("--config", type=int, default=-1)
ap.add_argument("--iters", type=int, default=6)
args = ap.parse_args()
h = Harness(find_or_build_lib())
nb = -(-args.k // args.bs)
layers = 8
b = [torch.randint(0, 256, (args.n, nb, args.bs // 2), dtype=torch.uint8, device="cuda") for _ in range(layers)]
s = [(torch.rand(args.n, nb, device="cuda") * 0.02).half() for _ in range(layers)]
a = torch.randn(args.m, args.k, device="cuda", dtype=torch.float16)
y = torch.empty(args.m, args.n, device="cuda", dtype=torch.float16)
for i in range(args.iters):
    h.matmul(a, b[i % layers], s[i % layers], None, None, y, k=args.k, n=args.n, block_size=args.bs, path=args.path,
             config=args.config)
torch.cuda.synchronize()
print("ok")
