"""ctypes front end of libonnxq_cuda_harness.so: the CUDA block-int4 kernels without ORT.

Used by tests/ops_cuda and bench/bench_cuda_int4.py. Tensors are torch CUDA tensors; the
launch goes on torch's current stream (so CUDA graphs capture it).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LIB = REPO / "build" / "cuda-harness" / "libonnxq_cuda_harness.so"

PATH_AUTO, PATH_SKINNY, PATH_TC, PATH_SIMT, PATH_WG = 0, 1, 2, 3, 4
PATH_NAMES = {PATH_AUTO: "auto", PATH_SKINNY: "skinny", PATH_TC: "tensorcore", PATH_SIMT: "simt", PATH_WG: "wgmma"}
N_TC_CONFIGS = 8
N_WG_CONFIGS = 35  # wgmma path (sm_90 only): ops/cuda/block_int4_kernels.cu Wg0..Wg9, Ws0..Ws24 (10..34)
WG_STREAM_K = 32  # Ws22: stream-K over the harness's workspace (its plain variant without one: 30)


def wgmma_device() -> bool:
    """True when the current torch device runs the wgmma path (compute capability 9.0)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def find_or_build_lib(build: bool = True) -> Path | None:
    """The harness library: $ONNXQ_CUDA_HARNESS, else build/cuda-harness/, built with nvcc
    when missing (and nvcc is on PATH). None when neither works."""
    env = os.environ.get("ONNXQ_CUDA_HARNESS")
    if env:
        return Path(env) if Path(env).exists() else None
    if DEFAULT_LIB.exists():
        return DEFAULT_LIB
    if build and shutil.which("nvcc"):
        subprocess.run(["sh", str(REPO / "bench" / "device" / "build_cuda_harness.sh"), str(DEFAULT_LIB.parent)],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        return DEFAULT_LIB if DEFAULT_LIB.exists() else None
    return None


class HarnessError(RuntimeError):
    def __init__(self, code: int, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code


class Harness:
    def __init__(self, lib_path: Path | str):
        self.lib = ctypes.CDLL(str(lib_path))
        f = self.lib.onnxq_cuda_matmul_block_int4
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 3 + [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        self.lib.onnxq_cuda_choose_path.restype = ctypes.c_int
        self.lib.onnxq_cuda_choose_path.argtypes = [ctypes.c_int] + [ctypes.c_int64] * 4
        self.lib.onnxq_cuda_format_constants.restype = ctypes.c_int
        self.lib.onnxq_cuda_format_constants.argtypes = [ctypes.POINTER(ctypes.c_int)] * 3 + [ctypes.c_int]
        self.lib.onnxq_cuda_set_workspace.restype = None
        self.lib.onnxq_cuda_set_workspace.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.lib.onnxq_cuda_workspace_bytes.restype = ctypes.c_size_t
        self.lib.onnxq_cuda_workspace_bytes.argtypes = []
        self._err = ctypes.create_string_buffer(512)
        self._ws = None  # stream-K workspace (zero-filled torch buffer), made at the first matmul
        self._ws_enabled = True

    def _ensure_workspace(self) -> None:
        """One zero-filled workspace for the stream-K configs (the harness runs one stream at a time)."""
        import torch

        if self._ws is None and self._ws_enabled:
            nbytes = int(self.lib.onnxq_cuda_workspace_bytes())
            if nbytes == 0:
                return
            self._ws = torch.zeros(nbytes, dtype=torch.uint8, device="cuda")
            torch.cuda.synchronize()
            self.lib.onnxq_cuda_set_workspace(self._ws.data_ptr(), nbytes)

    def set_workspace_enabled(self, enabled: bool) -> None:
        """Without a workspace the stream-K configs run their plain variant (for tests)."""
        self._ws_enabled = enabled
        if enabled:
            if self._ws is not None:
                self.lib.onnxq_cuda_set_workspace(self._ws.data_ptr(), self._ws.numel())
        else:
            self.lib.onnxq_cuda_set_workspace(None, 0)

    def format_constants(self) -> dict:
        bits, zc = ctypes.c_int(), ctypes.c_int()
        arr = (ctypes.c_int * 16)()
        n = self.lib.onnxq_cuda_format_constants(ctypes.byref(bits), ctypes.byref(zc), arr, 16)
        return {"bits": bits.value, "zero_code": zc.value, "block_sizes": tuple(arr[:n])}

    def choose_path(self, dtype_is_f16: bool, m: int, k: int, n: int, bs: int) -> str:
        return PATH_NAMES[self.lib.onnxq_cuda_choose_path(1 if dtype_is_f16 else 0, m, k, n, bs)]

    def matmul_raw(self, *, f16: bool, a: int, b: int, scales: int, zp: int | None, bias: int | None, y: int,
                   m: int, k: int, n: int, block_size: int, path: int = PATH_AUTO, config: int = -1,
                   pdl: bool = False, stream: int = 0) -> None:
        self._ensure_workspace()
        rc = self.lib.onnxq_cuda_matmul_block_int4(
            1 if f16 else 0, a, b, scales, zp or None, bias or None, y, m, k, n, block_size, path, config,
            1 if pdl else 0, stream or None, self._err, len(self._err))
        if rc != 0:
            raise HarnessError(rc, self._err.value.decode(errors="replace"))

    def matmul(self, a, b, scales, zp, bias, y, *, k: int, n: int, block_size: int, path: int = PATH_AUTO,
               config: int = -1, pdl: bool = False, stream=None) -> None:
        """torch tensors: a [M, K] (f16/f32), b uint8 [N, nb, bs/2], scales [N, nb], zp uint8
        [N, ceil(nb/2)] or None, bias [N] or None, y [M, N] (written)."""
        import torch

        if stream is None:
            stream = torch.cuda.current_stream().cuda_stream
        self.matmul_raw(f16=a.dtype == torch.float16, a=a.data_ptr(), b=b.data_ptr(), scales=scales.data_ptr(),
                        zp=None if zp is None else zp.data_ptr(), bias=None if bias is None else bias.data_ptr(),
                        y=y.data_ptr(), m=a.shape[0], k=k, n=n, block_size=block_size, path=path, config=config,
                        pdl=pdl, stream=stream)
