"""Write MatMulBlockInt4 kernel cases for scripts/aarch64/kernel_check.cc: weights packed by
the Python reference (onnxq.formats), reference outputs computed by numpy.

    python scripts/aarch64/make_cases.py OUT_DIR

Exact path (accuracy_level 0): ``A @ dequantize(W)`` in float64. int8 path (accuracy_level
4): A quantized per block exactly as ops/src/kernel.h specifies (float32 arithmetic,
round half to even), integer block dot products, combined in float64.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from onnxq.formats import BlockInt4Format  # noqa: E402

# name, M, K, N, block_size, zero points (none|packed|float), int8_a, force_path, tolerance
CASES = [
    ("gemv_sym_b32", 1, 256, 48, 32, "none", 0, 0, 1e-4),
    ("gemm_asym_b64_ragged", 5, 200, 37, 64, "packed", 0, 0, 1e-4),
    ("fzp_b16", 3, 100, 20, 16, "float", 0, 0, 1e-4),
    ("gemm_forced_b128", 1, 384, 40, 128, "packed", 0, 2, 1e-4),
    ("gemv_forced_b32", 6, 96, 24, 32, "none", 0, 1, 1e-4),
    ("int8_sym_b128", 2, 384, 33, 128, "none", 1, 0, 1e-4),
    ("int8_asym_b32_ragged", 7, 170, 19, 32, "packed", 1, 0, 1e-4),
    ("int8_fzp_b256_ragged", 1, 300, 8, 256, "float", 1, 0, 1e-4),
    ("int8_gemm_b16", 9, 64, 70, 16, "packed", 1, 2, 1e-4),
]


def _quantize_a(a: np.ndarray, bs: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and per-block scales of A rows, as kernel.h specifies."""
    m, k = a.shape
    nb = -(-k // bs)
    q = np.zeros((m, k), np.int32)
    sa = np.zeros((m, nb), np.float32)
    for i in range(m):
        for b in range(nb):
            blk = a[i, b * bs:(b + 1) * bs].astype(np.float32)
            amax = np.float32(np.max(np.abs(blk)))
            inv = np.float32(np.float32(127.0) / amax) if amax > 0 else np.float32(0.0)
            q[i, b * bs:(b + 1) * bs] = np.rint((blk * inv).astype(np.float32)).astype(np.int32)
            sa[i, b] = np.float32(amax / np.float32(127.0))
    return q, sa


def make_case(out: Path, name, m, k, n, bs, zp, int8_a, rng) -> None:
    fmt = BlockInt4Format(block_size=bs, symmetric=(zp == "none"))
    w = rng.standard_normal((k, n)).astype(np.float32)
    pw = fmt.quantize(w)
    if zp == "float":  # fractional (HQQ-style) zero points
        nb = fmt.n_blocks(k)
        zpf = (pw.zero_point_values() + rng.uniform(-0.5, 0.5, (n, nb))).astype(np.float32)
        pw = type(pw)(fmt=fmt, k=k, n=n, packed=pw.packed, scales=pw.scales, zero_points=zpf)
    a = rng.standard_normal((m, k)).astype(np.float32)
    if not int8_a:
        ref = a.astype(np.float64) @ pw.dequantize().astype(np.float64)
    else:
        q, sa = _quantize_a(a, bs)
        codes = pw.codes().astype(np.int64)  # [K, N]
        zpv = pw.zero_point_values().astype(np.float64)  # [N, nb]
        s = pw.scales.astype(np.float64)
        ref = np.zeros((m, n))
        for b in range(fmt.n_blocks(k)):
            sl = slice(b * bs, min((b + 1) * bs, k))
            dot = q[:, sl].astype(np.int64) @ codes[sl]  # [M, N]
            qsum = q[:, sl].sum(axis=1, dtype=np.int64)[:, None]
            ref += sa[:, b:b + 1].astype(np.float64) * s[:, b][None] * (dot - zpv[:, b][None] * qsum)
    a.tofile(out / f"{name}.A")
    pw.packed.reshape(n, -1).tofile(out / f"{name}.packed")
    pw.scales.astype(np.float32).tofile(out / f"{name}.scales")
    if pw.zero_points is not None:
        pw.zero_points.tofile(out / f"{name}.zp")
    ref.astype(np.float32).tofile(out / f"{name}.ref")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    lines = ["# name M K N block_size zp int8_a force_path tolerance"]
    for name, m, k, n, bs, zp, int8_a, force, tol in CASES:
        make_case(out, name, m, k, n, bs, zp, int8_a, rng)
        lines.append(f"{name} {m} {k} {n} {bs} {zp} {int8_a} {force} {tol}")
    (out / "cases.txt").write_text("\n".join(lines) + "\n")
    print(f"{len(CASES)} cases written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
