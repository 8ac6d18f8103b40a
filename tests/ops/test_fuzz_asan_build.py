"""libonnxq_ops.so built with AddressSanitizer (-DONNXQ_SANITIZE=address) passes the op's
correctness and fuzz tests with no ASan report (scripts/asan_ops_check.sh, into build/asan)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _asan_runtime() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    if not shutil.which(cxx) or not shutil.which("cmake"):
        return None
    out = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return out if out and Path(out).is_file() else None


@pytest.mark.skipif(_asan_runtime() is None, reason="needs cmake and a C++ compiler with the ASan runtime (libasan.so)")
def test_asan_build_runs_fuzz_and_correctness_clean(ops_lib):
    # ops_lib: the normal build exists, so the ORT headers are available to this build too
    proc = subprocess.run(
        ["sh", str(REPO / "scripts" / "asan_ops_check.sh"), str(REPO / "build" / "asan")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert "no sanitizer report" in proc.stderr
