"""ONNX Runtime sessions that can run onnxq's custom ops (domain ``com.onnxq``).

The op libraries are built from ``ops/`` by the package install (scikit-build-core runs
CMake) and land in the package as ``onnxq/_lib/libonnxq_ops.so`` (CPU) and
``onnxq/_lib/libonnxq_ops_cuda.so`` (CUDA, when built). ``onnxq ops path`` prints them.

ONNX Runtime accepts one registration of a custom-op domain per session, so a session
registers the CUDA library when it asks for the CUDA execution provider (and that library
exists), else the CPU one.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from onnxq.errors import OnnxqError

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime as ort

__all__ = ["CUSTOM_OP_DOMAIN", "library_path", "session", "session_options", "build_info"]

log = logging.getLogger(__name__)

CUSTOM_OP_DOMAIN = "com.onnxq"
_LIB_NAMES = {"cpu": "libonnxq_ops.so", "cuda": "libonnxq_ops_cuda.so"}
_BUILD_STEP = (
    'reinstall onnxq so that CMake builds ops/: `pip install -e ".[dev]"` (or `pip install .`); '
    "the build needs the ONNX Runtime C/C++ API headers (onnxruntime >= 1.21): it finds them via "
    "ONNXRUNTIME_INCLUDE_DIR=/path/to/include, the system include paths, or fetches Debian's "
    "libonnxruntime-dev headers with apt (ops/cmake/fetch_ort_headers.sh)"
)


def _lib_dir() -> Path:
    return Path(str(importlib.resources.files("onnxq") / "_lib"))


def build_info() -> dict[str, str]:
    """What the last build of ``ops/`` recorded (``status=built|missing``, ``reason``, ...)."""
    info: dict[str, str] = {}
    try:
        text = (importlib.resources.files("onnxq") / "_lib" / "build_info.txt").read_text()
    except (FileNotFoundError, NotADirectoryError, OSError):
        return info
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key.strip()] = value.strip()
    return info


def library_path(device: str = "cpu") -> Path:
    """Path of the custom-op library for ``device`` ("cpu" or "cuda").

    Raises OnnxqError naming the build step when the library was not built."""
    if device not in _LIB_NAMES:
        raise OnnxqError(f"unknown device {device!r}; use one of: {', '.join(_LIB_NAMES)}")
    path = _lib_dir() / _LIB_NAMES[device]
    if path.is_file():
        return path
    info = build_info()
    if device == "cuda":
        why = "the CUDA op library was not built (it needs a CUDA compiler and the ORT headers at install time)"
    elif info.get("status") == "missing":
        why = f"the custom-op library was not built: {info.get('reason', 'ORT headers missing')}"
    else:
        why = f"the custom-op library {path.name} is not in {path.parent}"
    raise OnnxqError(f"{why}; to fix: {_BUILD_STEP}")


def session_options(threads: int | None = None) -> "ort.SessionOptions":
    """SessionOptions with ``threads`` intra-op threads (None: ORT's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise OnnxqError(f"threads must be >= 1, got {threads}")
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so


def session(
    model_path_or_bytes: str | os.PathLike | bytes,
    providers: Sequence[str | tuple[str, dict]] | None = None,
    threads: int | None = None,
    custom_ops: bool = True,
) -> "ort.InferenceSession":
    """An InferenceSession with the onnxq custom-op library registered.

    ``providers`` defaults to CPU only. ``custom_ops=False`` skips the registration (for
    models without com.onnxq nodes, or to compare against stock ORT)."""
    import onnxruntime as ort

    so = session_options(threads)
    providers = list(providers) if providers else ["CPUExecutionProvider"]
    if custom_ops:
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        device = "cpu"
        if "CUDAExecutionProvider" in names and (_lib_dir() / _LIB_NAMES["cuda"]).is_file():
            device = "cuda"
        lib = library_path(device)
        log.debug("registering %s custom ops from %s", CUSTOM_OP_DOMAIN, lib)
        so.register_custom_ops_library(str(lib))
    model = model_path_or_bytes if isinstance(model_path_or_bytes, bytes) else os.fspath(model_path_or_bytes)
    try:
        return ort.InferenceSession(model, so, providers=providers)
    except Exception as e:  # ORT raises its own exception types
        if "com.onnxq" in str(e) and not custom_ops:
            raise OnnxqError(f"the model uses {CUSTOM_OP_DOMAIN} ops; create the session with custom_ops=True") from e
        raise
