"""Check a written model: the full ONNX checker, then an ORT session loads it; and, given
samples, how closely its outputs follow the float model's."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from onnxq.errors import OnnxqError

__all__ = ["check_model_file", "VerificationError", "AgreementSkipped", "agreement_with_float", "AGREEMENT_SAMPLES",
           "AGREEMENT_MAX_BYTES", "LOW_SQNR_DB"]

# samples both models run on after quantizing: seconds, not minutes. 8 overstated a voice
# detector whose rare quiet frames flip (30.3 dB on the first 8, 20.8 on all 60)
AGREEMENT_SAMPLES = 32
LOW_SQNR_DB = 10.0  # below this an output is far enough from the float model to warn
AGREEMENT_MAX_BYTES = 2 << 30  # larger float models: no second pair of sessions after quantizing
TEXT_AGREEMENT_MAX_BYTES = 256 << 20  # token text: checked for encoders this size, not for language models

logger = logging.getLogger(__name__)


class VerificationError(OnnxqError):
    pass


class AgreementSkipped(OnnxqError):
    """The output check against the float model was not run (the message says why)."""


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


def agreement_with_float(float_path: str | os.PathLike, quant_path: str | os.PathLike, data, *,
                         samples: int = AGREEMENT_SAMPLES, max_weight_bytes: int = AGREEMENT_MAX_BYTES):
    """Output error of the quantized model against the float model on the first ``samples``
    feeds of ``data`` (``CalibrationData`` or a list of feeds): a ``Comparison`` of the float
    outputs only (SQNR, cosine, top-1 agreement for logits), or None when ``data`` can be read
    only once (it was used up by calibration), is token text for a model over
    ``TEXT_AGREEMENT_MAX_BYTES`` of weights (a language model, whose
    logits over a whole vocabulary and window are better judged by perplexity, and cost two
    more full sessions: SmolLM2-135M +2.2 GB, +24 s), or the model has no float output.
    Raises AgreementSkipped for a float model with more than ``max_weight_bytes`` of weights
    (two more ORT sessions of it)."""
    import dataclasses

    import onnx_ir as ir

    from onnxq import modelio
    from onnxq.compare import compare_models
    from onnxq.data import CalibrationData, input_specs

    text = hasattr(data, "as_calibration_data")  # calib_text.TextCalibration: token windows
    if isinstance(data, CalibrationData):
        if not data.reiterable:
            return None
    elif not isinstance(data, (list, tuple)) and not text:
        return None
    float_model = modelio.load(float_path)
    if text:
        # a text encoder is checked like any model; a language model's logits over a whole
        # vocabulary and window are better judged by perplexity and cost two more sessions
        if modelio.model_weight_bytes(float_model) > TEXT_AGREEMENT_MAX_BYTES:
            return None
        data = data.as_calibration_data()
    if modelio.model_weight_bytes(float_model) > max_weight_bytes:
        raise AgreementSkipped(f"a model over {max_weight_bytes / 2**30:.0f} GB (two more ORT sessions)")
    floats = {v.name for v in float_model.graph.outputs
              if v.type is not None and v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16,
                                                     ir.DataType.DOUBLE)}
    if not floats:  # class ids, masks, indices: no SQNR to speak of
        return None
    feeds = data.feeds(input_specs(float_model), limit=samples) if isinstance(data, CalibrationData) else data
    comparison = compare_models(float_path, quant_path, feeds, per_layer=False, max_samples=samples)
    return dataclasses.replace(comparison, outputs=tuple(o for o in comparison.outputs if o.name in floats))
