"""Activation statistics of MatMul inputs for GPTQ/AWQ: one ORT session, streamed samples.

A copy of the model exposes every observed MatMul input as an extra graph output; each
calibration sample is run once and folded into per-tensor state, so memory is flat in the
number of samples: ``H = sum x x^T`` (``[K, K]``, float64), ``sum |x|`` (``[K]``), a token
count, and the first few rows (kept for the accuracy-level parity check). Many MatMuls
share one input (q/k/v; gate/up): their statistics are collected once.

``first_token_weight``: for inputs with a sequence axis (rank >= 3, ``[..., seq, K]``) the
first position of every sample counts this many times in ``H``. In a causal LM that
position is the attention sink: its hidden state carries the massive activations that
every later token's attention reads. Measured on SmolLM2-135M (GPTQ, block 128
symmetric, lm_head int8): dropping it from ``H`` gave 4.1x fp32 perplexity, weight 1
1.148x, weight 8 1.117x.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxq.errors import CalibrationDataError
from onnxq.int4._blas import single_thread

__all__ = ["ActivationStats", "collect_activation_stats"]

logger = logging.getLogger(__name__)

SAMPLE_ROWS = 64


@dataclasses.dataclass
class ActivationStats:
    """What calibration saw of one MatMul input (its last axis is K)."""

    name: str
    hessian: np.ndarray  # float64 [K, K], sum over tokens of x x^T
    abs_sum: np.ndarray  # float64 [K]
    n_tokens: int = 0
    samples: np.ndarray | None = None  # float32 [<= SAMPLE_ROWS, K]
    first_token_weight: float = 1.0

    @property
    def k(self) -> int:
        return int(self.hessian.shape[0])

    @property
    def mean_abs(self) -> np.ndarray:
        return self.abs_sum / max(self.n_tokens, 1)

    def update(self, x: np.ndarray) -> None:
        x2 = np.asarray(x, dtype=np.float32).reshape(-1, self.k)
        if not np.all(np.isfinite(x2)):
            raise CalibrationDataError(f"calibration produced NaN/Inf in {self.name}")
        self.hessian += (x2.T @ x2).astype(np.float64)
        x = np.asarray(x)
        if self.first_token_weight != 1.0 and x.ndim >= 3:
            x0 = np.asarray(x[..., 0, :], dtype=np.float32).reshape(-1, self.k)
            self.hessian += (self.first_token_weight - 1.0) * (x0.T @ x0).astype(np.float64)
        self.abs_sum += np.abs(x2).sum(axis=0, dtype=np.float64)
        self.n_tokens += x2.shape[0]
        have = 0 if self.samples is None else self.samples.shape[0]
        if have < SAMPLE_ROWS:
            take = x2[: SAMPLE_ROWS - have].copy()
            self.samples = take if self.samples is None else np.concatenate([self.samples, take])


def _session_for(model: ir.Model, outputs: Sequence[ir.Value], workdir: Path):
    """An ORT session over ``model`` with ``outputs`` appended to the graph outputs (the
    model itself is left as it was)."""
    import onnxruntime as ort

    from onnxq import modelio

    graph = model.graph
    added = [v for v in outputs if not v.is_graph_output()]
    graph.outputs.extend(added)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if modelio.model_weight_bytes(model) > modelio.EXTERNAL_DATA_THRESHOLD_BYTES:
            path = workdir / "calib.onnx"
            ir.save(model, path, external_data="calib.onnx.data")
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        data = ir.serde.serialize_model(model).SerializeToString()
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    finally:
        for v in added:
            graph.outputs.remove(v)


def collect_activation_stats(
    model: ir.Model,
    values: Sequence[tuple[ir.Value, int]],
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    progress: Callable[[int], None] | None = None,
    first_token_weight: float = 1.0,
) -> dict[str, ActivationStats]:
    """Run ``feeds`` through ``model`` and return statistics for each value (by name).

    ``values``: ``(tensor, K)`` pairs, tensors of the main graph (MatMul inputs) whose last
    dimension is ``K``. ``first_token_weight``: see the module docstring."""
    if not first_token_weight >= 0:
        raise CalibrationDataError(f"first_token_weight must be >= 0, got {first_token_weight}")
    uniq: dict[str, ir.Value] = {}
    stats: dict[str, ActivationStats] = {}
    for v, k in values:
        if v.name is None:
            raise CalibrationDataError("cannot observe an unnamed tensor")
        if v.name in uniq:
            continue
        uniq[v.name] = v
        stats[v.name] = ActivationStats(
            v.name, np.zeros((k, k), dtype=np.float64), np.zeros(k, dtype=np.float64),
            first_token_weight=float(first_token_weight),
        )
    names = list(uniq)
    with tempfile.TemporaryDirectory(prefix="onnxq-calib-") as tmp:
        sess = _session_for(model, list(uniq.values()), Path(tmp))
        input_names = {i.name for i in sess.get_inputs()}
        n = 0
        t0 = time.perf_counter()
        for feed in feeds:
            missing = input_names - set(feed)
            if missing:
                raise CalibrationDataError(f"calibration sample lacks model input(s) {sorted(missing)}")
            outs = sess.run(names, {k: v for k, v in feed.items() if k in input_names})
            with single_thread():
                for name, x in zip(names, outs):
                    stats[name].update(x)
            n += 1
            if progress is not None:
                progress(n)
            logger.debug("calibration sample %d done (%.1f s)", n, time.perf_counter() - t0)
        del sess
    if n == 0:
        raise CalibrationDataError("the calibration data is empty")
    logger.info("calibration: %d samples, %d observed tensors, %.1f s", n, len(names), time.perf_counter() - t0)
    return stats
