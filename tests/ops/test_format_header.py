"""ops/include/onnxq/block_int4_format.h and onnxq.formats agree byte for byte."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from onnxq.formats import SUPPORTED_BLOCK_SIZES, BlockInt4Format

REPO = Path(__file__).resolve().parents[2]
HEADER_DIR = REPO / "ops" / "include"

PROGRAM = r"""
#include <cstdio>
#include <vector>
#include "onnxq/block_int4_format.h"
namespace f = onnxq::block_int4;
int main() {
  long long k, n, bs;
  if (std::scanf("%lld %lld %lld", &k, &n, &bs) != 3) return 2;
  std::printf("%d %lld %lld %lld %lld\n", f::is_supported_block_size(bs) ? 1 : 0, (long long)f::bytes_per_block(bs),
              (long long)f::n_blocks(k, bs), (long long)f::row_bytes(k, bs), (long long)f::zero_point_bytes(k, bs));
  const long long rb = f::row_bytes(k, bs), zb = f::zero_point_bytes(k, bs), nb = f::n_blocks(k, bs);
  std::vector<unsigned char> packed(n * rb), zp(n * zb);
  std::vector<float> scales(n * nb);
  for (auto& b : packed) { unsigned v; std::scanf("%u", &v); b = (unsigned char)v; }
  for (auto& b : zp) { unsigned v; std::scanf("%u", &v); b = (unsigned char)v; }
  for (auto& s : scales) std::scanf("%f", &s);
  for (long long kk = 0; kk < k; ++kk)
    for (long long nn = 0; nn < n; ++nn) {
      const long long b = kk / bs;
      std::printf("%.9g\n", f::dequantize(f::code_at(packed.data() + nn * rb, kk),
                                          (float)f::zero_point_at(zp.data() + nn * zb, b), scales[nn * nb + b]));
    }
  return 0;
}
"""


@pytest.fixture(scope="module")
def header_program(tmp_path_factory) -> Path:
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("fmt")
    (d / "check.cc").write_text(PROGRAM)
    exe = d / "check"
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{HEADER_DIR}", str(d / "check.cc"), "-o", str(exe)], check=True)
    return exe


@pytest.mark.parametrize("k,n,bs", [(100, 3, 16), (64, 2, 32), (200, 3, 64), (300, 2, 128), (513, 3, 256)])
def test_header_dequantizes_like_formats(header_program, k, n, bs):
    fmt = BlockInt4Format(bs, symmetric=False)
    w = np.random.default_rng(k).standard_normal((k, n)).astype(np.float32)
    p = fmt.quantize(w)
    stdin = " ".join([f"{k} {n} {bs}", *map(str, p.packed.ravel()), *map(str, p.zero_points.ravel()),
                      *(f"{x:.9g}" for x in p.scales.ravel())])
    out = subprocess.run([str(header_program)], input=stdin, capture_output=True, text=True, check=True).stdout.split("\n")
    supported, bpb, nb, rb, zb = map(int, out[0].split())
    assert supported == 1 and bpb == fmt.bytes_per_block and nb == fmt.n_blocks(k)
    assert (n, nb, rb // nb) == fmt.packed_shape(k, n) and (n, zb) == fmt.zero_points_shape(k, n)
    deq = np.array([float(x) for x in out[1 : 1 + k * n]], dtype=np.float32).reshape(k, n)
    np.testing.assert_array_equal(deq, p.dequantize())


def test_supported_block_sizes_agree(header_program):
    for bs in (8, 16, 24, 32, 48, 64, 128, 256, 512):
        out = subprocess.run([str(header_program)], input=f"0 0 {bs}", capture_output=True, text=True).stdout
        assert (out.split()[0] == "1") == (bs in SUPPORTED_BLOCK_SIZES), bs
