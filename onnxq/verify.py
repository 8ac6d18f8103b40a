"""Check a written model: the full ONNX checker, then an ORT session loads it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from onnxq.errors import OnnxqError

__all__ = ["check_model_file", "VerificationError"]

logger = logging.getLogger(__name__)


class VerificationError(OnnxqError):
    pass


def _uses_domain(path: Path, domain: str) -> bool:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return any(o.domain == domain for o in proto.opset_import)


def check_model_file(path: str | os.PathLike, *, load_in_ort: bool = True) -> None:
    """Raise VerificationError unless ``path`` passes ``onnx.checker`` (full check) and
    loads in ORT CPU (with the onnxq custom-op library when the model uses ``com.onnxq``)."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise VerificationError(f"the written model fails the ONNX checker: {str(e).splitlines()[0][:300]}") from None
    if not load_in_ort:
        return
    custom = _uses_domain(path, "com.onnxq")
    try:
        if custom:
            from onnxq import runtime

            runtime.session(path)
        else:
            import onnxruntime as ort

            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except OnnxqError:
        raise
    except Exception as e:
        raise VerificationError(f"ONNX Runtime cannot load the written model: {str(e).splitlines()[0][:300]}") from None
    logger.info("verified %s (checker + ORT load)", path)
