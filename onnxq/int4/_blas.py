"""Best-effort control of numpy's OpenBLAS thread count.

On a small, shared machine OpenBLAS's threaded Cholesky/eigh/gemm of a few-hundred-wide
matrix was measured 10-50x slower than one thread (its threads spin against each other and
against other processes), so the int4 algorithms run their linear algebra on one thread.
Where the numpy build has no bundled OpenBLAS, this does nothing.

Parallelism there is instead coarse: :func:`workers` Python threads, each running
independent single-threaded numpy/BLAS work (numpy releases the GIL inside its loops and
BLAS calls). ``single_thread`` nests and may be entered from several threads at once: the
first entry sets one BLAS thread, the last exit restores the count found."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading
from typing import Iterator

import numpy as np

__all__ = ["single_thread", "workers"]

_lib = None
_checked = False
_lock = threading.Lock()
_depth = 0
_saved = 0

MAX_WORKERS = 4  # Python threads for independent per-problem work (GPTQ batches)


def workers() -> int:
    """Worker threads for coarse-grained parallel numpy work: the CPUs this process may use
    (at most ``MAX_WORKERS``), less those other processes keep busy by the 1-minute load
    average (this process counted in it), at least 1. Extra threads only help on idle
    cores: measured with GPTQ on SmolLM2 on 2 shared CPUs, 2 threads were 1.3-1.9x faster
    than 1 while the other core was idle, and 0-10% slower (up to 1.4x once) while other
    processes kept it busy (the threads then take turns on one core and for the GIL)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        idle = n - os.getloadavg()[0]
    except (AttributeError, OSError):
        idle = float(n)
    return max(1, min(MAX_WORKERS, n, 1 + int(idle + 0.5)))


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
    with _lock:
        lib = _openblas()
    if lib is None:
        yield
        return
    global _depth, _saved
    get, put = lib
    with _lock:
        if _depth == 0:
            _saved = get()
            put(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                put(_saved)
