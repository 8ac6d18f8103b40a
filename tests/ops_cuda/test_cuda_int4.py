"""CUDA MatMulBlockInt4 kernels (ops/cuda) against the numpy reference, via the ctypes harness.

Every kernel is run on the packed bytes that ``onnxq.formats`` produces, on shapes with K not
a multiple of the block, odd N, an odd block count (8-byte B rows), K not a multiple of 8
(scalar A loads) and M in {1, 3, 16, 129}.

Tolerances (``rel = ||y - ref|| / ||ref||``, ref in float64 of the very inputs the kernel saw):
- float32 A (SIMT path: fp32 dequant, fp32 FMA): rel <= 1e-5.
- float16 A (skinny and tensor-core paths: fp16 operands, fp32 accumulation, fp16 output):
  ref = float64(A16) @ dequantize(B with the fp16 scales); rel <= 2e-3 and
  max|y - ref| <= 1e-2 * max|ref|. fp16 output alone rounds at 2^-11 = 4.9e-4 relative.

Needs torch with a CUDA device; skipped otherwise. The harness library is taken from
$ONNXQ_CUDA_HARNESS or build/cuda-harness/, and built with nvcc when missing.
"""

from __future__ import annotations

import zlib

import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
try:
    from onnxq import formats
except ImportError:  # a GPU machine whose onnx_ir/onnx differ: formats needs numpy only
    _pkg = types.ModuleType("onnxq")
    _pkg.__path__ = [str(REPO / "onnxq")]
    sys.modules["onnxq"] = _pkg
    from onnxq import formats

# ---- GPU tests ------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from bench.device.cuda_int4_harness import (  # noqa: E402
    N_TC_CONFIGS,
    N_WG_CONFIGS,
    PATH_AUTO,
    PATH_SIMT,
    PATH_SKINNY,
    PATH_TC,
    PATH_WG,
    WG_STREAM_K,
    Harness,
    HarnessError,
    find_or_build_lib,
    wgmma_device,
)

F32_TOL = 1e-5
F16_TOL = 2e-3
F16_MAX_TOL = 1e-2

# (K, N, block_size, symmetric, bias)
CASES = [
    (4200, 333, 128, False, True),  # K ragged in the last block, odd N, zero points, bias
    (1001, 257, 32, True, False),  # K odd: scalar A loads
    (4100, 129, 16, False, False),  # odd block count: 8-byte B rows
    (768, 96, 256, True, True),  # block 256
    (2048, 47, 64, False, False),  # small odd N
    (96, 300, 32, False, True),  # two 64-k tiles: empty K slices under 4-way split-K
]
MS = [1, 3, 16, 129]
WG = wgmma_device()  # the wgmma path exists on sm_90 only


@pytest.fixture(scope="module")
def harness() -> Harness:
    lib = find_or_build_lib()
    if lib is None:
        pytest.skip("harness library missing and nvcc not found")
    return Harness(lib)


def _packed(rng, k, n, bs, symmetric) -> formats.PackedBlockInt4:
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.05
    return formats.BlockInt4Format(block_size=bs, symmetric=symmetric).quantize(w)


def _reference(p: formats.PackedBlockInt4, a: np.ndarray, f16: bool, bias: np.ndarray | None) -> np.ndarray:
    scales = p.scales.astype(np.float16).astype(np.float32) if f16 else p.scales
    q = formats.PackedBlockInt4(p.fmt, p.k, p.n, p.packed, scales, p.zero_points)
    y = a.astype(np.float64) @ q.dequantize().astype(np.float64)
    if bias is not None:
        y = y + bias.astype(np.float64)
    return y


def _run(h: Harness, p, a: np.ndarray, bias, *, path, config=-1, pdl=False) -> np.ndarray:
    dt = torch.float16 if a.dtype == np.float16 else torch.float32
    dev = "cuda"
    ta = torch.from_numpy(a).to(dev)
    tb = torch.from_numpy(p.packed).to(dev)
    ts = torch.from_numpy(p.scales).to(dev, dt)
    tz = None if p.zero_points is None else torch.from_numpy(p.zero_points).to(dev)
    tbias = None if bias is None else torch.from_numpy(bias).to(dev, dt)
    y = torch.full((a.shape[0], p.n), float("nan"), dtype=dt, device=dev)  # poisoned
    h.matmul(ta, tb, ts, tz, tbias, y, k=p.k, n=p.n, block_size=p.fmt.block_size, path=path, config=config, pdl=pdl)
    torch.cuda.synchronize()
    return y.cpu().numpy()


def _check(y: np.ndarray, ref: np.ndarray, f16: bool, what: str) -> float:
    assert np.isfinite(y).all(), f"{what}: unwritten or non-finite outputs"
    y64 = y.astype(np.float64)
    rel = float(np.linalg.norm(y64 - ref) / np.linalg.norm(ref))
    if f16:
        mx = float(np.abs(y64 - ref).max() / np.abs(ref).max())
        assert rel <= F16_TOL and mx <= F16_MAX_TOL, f"{what}: rel {rel:.3e} max {mx:.3e}"
    else:
        assert rel <= F32_TOL, f"{what}: rel {rel:.3e}"
    return rel


def _inputs(case, m, f16, seed):
    k, n, bs, sym, with_bias = case
    rng = np.random.default_rng(seed)
    p = _packed(rng, k, n, bs, sym)
    a = rng.standard_normal((m, k)).astype(np.float16 if f16 else np.float32)
    bias = rng.standard_normal(n).astype(np.float16 if f16 else np.float32) if with_bias else None
    return p, a, bias


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"K{c[0]}-N{c[1]}-bs{c[2]}-{'sym' if c[3] else 'asym'}")
def test_fp16_every_kernel(harness, case, m):
    p, a, bias = _inputs(case, m, True, seed=zlib.crc32(repr((case, m)).encode()))
    ref = _reference(p, a, True, bias)
    runs = [("auto", PATH_AUTO, -1)]
    if m <= 16:  # default; persistent ring (+ interleaved units, L2::256B loads); shared-memory
        # whole-line staging; one-shot burst kernel (+ L2::256B loads, + smem activations, 16 warps)
        runs += [(f"skinny_c{c}", PATH_SKINNY, c) for c in (-1, 0, 1, 2, 4, 32, 34, 160, 288, 416)]
    runs += [(f"tc{c}", PATH_TC, c) for c in range(N_TC_CONFIGS)]
    if WG:
        runs += [(f"wg{c}", PATH_WG, c) for c in range(N_WG_CONFIGS)]
    for name, path, cfg in runs:
        y = _run(harness, p, a, bias, path=path, config=cfg)
        _check(y, ref, True, f"{name} M={m}")
        y2 = _run(harness, p, a, bias, path=path, config=cfg)
        assert np.array_equal(y, y2), f"{name} M={m}: results differ between two runs (race?)"


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"K{c[0]}-N{c[1]}-bs{c[2]}-{'sym' if c[3] else 'asym'}")
def test_fp32_simt(harness, case, m):
    p, a, bias = _inputs(case, m, False, seed=zlib.crc32(repr((case, m, "f32")).encode()))
    ref = _reference(p, a, False, bias)
    for path in (PATH_AUTO, PATH_SIMT):
        _check(_run(harness, p, a, bias, path=path), ref, False, f"simt M={m}")


@pytest.mark.parametrize("m", [1, 16, 129])
def test_pdl_launch_matches(harness, m):
    case = CASES[0]
    p, a, bias = _inputs(case, m, True, seed=7 + m)
    ref = _reference(p, a, True, bias)
    plain = _run(harness, p, a, bias, path=PATH_AUTO)
    pdl = _run(harness, p, a, bias, path=PATH_AUTO, pdl=True)
    _check(pdl, ref, True, "pdl")
    assert np.array_equal(plain, pdl)


def test_llm_shape_fp16(harness):
    """One full-size layer per path: K=4096, N=11008, block 128 and 32."""
    for bs in (128, 32):
        p, a, bias = _inputs((4096, 11008, bs, True, False), 16, True, seed=bs)
        ref = _reference(p, a, True, None)
        paths = [("skinny", PATH_SKINNY), ("tc", PATH_TC)] + ([("wg", PATH_WG)] if WG else [])
        for name, path in paths:
            _check(_run(harness, p, a, None, path=path), ref, True, f"{name} bs={bs}")


@pytest.mark.skipif(not WG, reason="the wgmma path needs an sm_90 GPU")
@pytest.mark.parametrize("m", [64, 200, 256])
def test_wgmma_llm_shapes(harness, m):
    """Every wgmma config on a full-size layer, M over one and several token tiles."""
    p, a, bias = _inputs((4096, 4096, 128, False, True), m, True, seed=100 + m)
    ref = _reference(p, a, True, bias)
    for c in range(N_WG_CONFIGS):
        _check(_run(harness, p, a, bias, path=PATH_WG, config=c), ref, True, f"wg{c} M={m}")


@pytest.mark.skipif(not WG, reason="the wgmma path needs an sm_90 GPU")
@pytest.mark.parametrize("m", [64, 256])
def test_wgmma_push_exchange(harness, m):
    """The push-form split-K exchange (wg33 = Ws19 + push, wg34 = Ws15 + push) adds the ranks'
    partial tiles in the same order as the DSMEM reduce-scatter: bit-equal to the old configs,
    with and without PDL, and auto picks them at 4096² M=64 / 256 (block 128)."""
    p, a, bias = _inputs((4096, 4096, 128, False, True), m, True, seed=300 + m)
    ref = _reference(p, a, True, bias)
    new, old = (34, 25) if m == 64 else (33, 29)
    y = _run(harness, p, a, bias, path=PATH_WG, config=new)
    _check(y, ref, True, f"wg{new} M={m}")
    assert np.array_equal(y, _run(harness, p, a, bias, path=PATH_WG, config=old)), "push vs DSMEM exchange"
    assert np.array_equal(y, _run(harness, p, a, bias, path=PATH_WG, config=new, pdl=True)), "push + PDL"
    assert np.array_equal(y, _run(harness, p, a, bias, path=PATH_AUTO)), "auto picks the push config"


@pytest.mark.skipif(not WG, reason="the wgmma path needs an sm_90 GPU")
def test_wgmma_stream_k(harness):
    """Stream-K config on a grid where tiles are shared by two CTAs (M=512 at 4096²: 64 BT=256
    tiles on <= 132 CTAs), plain and PDL, deterministic, picked by auto there; without a workspace
    it runs its plain variant (wg30) bit for bit."""
    p, a, bias = _inputs((4096, 4096, 128, False, True), 512, True, seed=512)
    ref = _reference(p, a, True, bias)
    y = _run(harness, p, a, bias, path=PATH_WG, config=WG_STREAM_K)
    _check(y, ref, True, "stream-K M=512")
    assert np.array_equal(y, _run(harness, p, a, bias, path=PATH_WG, config=WG_STREAM_K)), "stream-K not deterministic"
    assert np.array_equal(y, _run(harness, p, a, bias, path=PATH_WG, config=WG_STREAM_K, pdl=True)), "stream-K + PDL"
    assert np.array_equal(y, _run(harness, p, a, bias, path=PATH_AUTO)), "auto at M=512 is the stream-K config"
    plain = _run(harness, p, a, bias, path=PATH_WG, config=WG_STREAM_K - 2)
    harness.set_workspace_enabled(False)
    try:
        assert np.array_equal(plain, _run(harness, p, a, bias, path=PATH_WG, config=WG_STREAM_K))
    finally:
        harness.set_workspace_enabled(True)


@pytest.mark.skipif(not WG, reason="the wgmma path needs an sm_90 GPU")
def test_wgmma_pdl_and_errors(harness):
    p, a, bias = _inputs(CASES[0], 129, True, seed=3)
    ref = _reference(p, a, True, bias)
    _check(_run(harness, p, a, bias, path=PATH_WG, pdl=True), ref, True, "wg pdl")
    with pytest.raises(HarnessError, match="wgmma config"):
        _run(harness, p, a, bias, path=PATH_WG, config=N_WG_CONFIGS)


def test_invalid_arguments_are_errors(harness):
    rng = np.random.default_rng(0)
    p = _packed(rng, 256, 64, 32, True)
    dev = "cuda"
    a = torch.randn(4, 256, dtype=torch.float16, device=dev)
    b = torch.from_numpy(p.packed).to(dev)
    s = torch.from_numpy(p.scales).to(dev, torch.float16)
    y = torch.zeros(4, 64, dtype=torch.float16, device=dev)
    common = dict(k=256, n=64)

    def call(**kw):
        args = dict(a=a, b=b, scales=s, zp=None, bias=None, y=y, **common, block_size=32)
        args.update(kw)
        harness.matmul(args.pop("a"), args.pop("b"), args.pop("scales"), args.pop("zp"), args.pop("bias"),
                       args.pop("y"), **args)

    with pytest.raises(HarnessError, match="block_size"):
        call(block_size=48)
    with pytest.raises(HarnessError, match="invalid sizes"):
        call(k=0)
    with pytest.raises(HarnessError, match="skinny"):
        big = torch.randn(17, 256, dtype=torch.float16, device=dev)
        call(a=big, y=torch.zeros(17, 64, dtype=torch.float16, device=dev), path=PATH_SKINNY)
    with pytest.raises(HarnessError, match="SIMT"):
        call(a=a.float(), scales=s.float(), y=y.float(), path=PATH_TC)
    with pytest.raises(HarnessError, match="config"):
        call(path=PATH_TC, config=99)
    with pytest.raises(HarnessError, match="aligned"):
        harness.matmul_raw(f16=True, a=a.data_ptr(), b=b.data_ptr() + 1, scales=s.data_ptr(), zp=None, bias=None,
                           y=y.data_ptr(), m=4, k=256, n=64, block_size=32)
    torch.cuda.synchronize()
    assert bool((y == 0).all()), "a refused call wrote Y"
