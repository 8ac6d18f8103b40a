"""The C++ format constants of ops/cuda agree with onnxq.formats (runs without a GPU)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from onnxq import formats

REPO = Path(__file__).resolve().parents[2]



def test_cuda_header_constants_match_formats(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "consts.cc"
    src.write_text(
        '#include <cstdio>\n#include "block_int4_cuda.h"\n'
        "int main() { namespace oc = onnxq::cuda;\n"
        '  std::printf("%d %d\\n", oc::kBits, oc::kSymmetricZeroCode);\n'
        '  for (int s : oc::kSupportedBlockSizes) std::printf("%d %lld %lld %lld\\n", s,\n'
        "    (long long)oc::BytesPerBlock(s), (long long)oc::NumBlocks(1000, s), (long long)oc::ZeroPointCols(oc::NumBlocks(1000, s)));\n"
        "  return 0; }\n"
    )
    exe = tmp_path / "consts"
    subprocess.run([cxx, "-std=c++17", "-I", str(REPO / "ops" / "cuda"), "-I", str(REPO / "ops" / "include"), str(src), "-o", str(exe)],
                   check=True)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    bits, zero = map(int, lines[0].split())
    assert bits == 4 and zero == formats.SYMMETRIC_ZERO_CODE
    rows = [tuple(map(int, ln.split())) for ln in lines[1:] if ln.strip()]
    assert tuple(r[0] for r in rows) == formats.SUPPORTED_BLOCK_SIZES
    for bs, bpb, nb, zc in rows:
        f = formats.BlockInt4Format(block_size=bs, symmetric=False)
        assert bpb == f.bytes_per_block
        assert nb == f.n_blocks(1000)
        assert (f.zero_points_shape(1000, 7)[1]) == zc
