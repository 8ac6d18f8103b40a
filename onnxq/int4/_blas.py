"""Best-effort control of numpy's OpenBLAS thread count.

On a small, shared machine OpenBLAS's threaded Cholesky/eigh/gemm of a few-hundred-wide
matrix was measured 10-50x slower than one thread (its threads spin against each other and
against other processes), so the int4 algorithms run their linear algebra on one thread.
Where the numpy build has no bundled OpenBLAS, this does nothing."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from typing import Iterator

import numpy as np

__all__ = ["single_thread"]

_lib = None
_checked = False


def _openblas():
    global _lib, _checked
    if _checked:
        return _lib
    _checked = True
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas*.so*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("64_", "_64_", ""):
            get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                _lib = (get, put)
                return _lib
    return None


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    lib = _openblas()
    if lib is None:
        yield
        return
    get, put = lib
    before = get()
    put(1)
    try:
        yield
    finally:
        put(before)
