"""Sensitivity-driven exclusion: keep the layers that add the most error in float until
the quantized model meets an accuracy target.

The error a node adds is measured locally, from one comparison run: the noise-to-signal
ratio (NSR, the inverse of linear SQNR) of its output minus the largest NSR among its
inputs. Nodes are excluded worst first, in rounds of growing size (1, 2, 4, …), each round
re-quantizing from the float model and re-measuring, until the target holds or the
round limit is reached.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from onnxq.compare import Comparison, compare_models, nsr

__all__ = ["AccuracyTarget", "AutoExcludeResult", "rank_nodes_by_added_error", "auto_exclude"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AccuracyTarget:
    """``min_sqnr_db``: every output's SQNR at least this. ``max_top1_drop``: for
    classifier-shaped outputs, the fraction of samples whose top-1 differs from the float
    model at most this (0.01 = 1 %)."""

    min_sqnr_db: float | None = None
    max_top1_drop: float | None = None

    def __post_init__(self) -> None:
        if self.min_sqnr_db is None and self.max_top1_drop is None:
            raise ValueError("give a target: min_sqnr_db and/or max_top1_drop")
        if self.max_top1_drop is not None and not 0 <= self.max_top1_drop <= 1:
            raise ValueError("max_top1_drop is a fraction between 0 and 1")

    def met_by(self, comparison: Comparison) -> bool:
        for o in comparison.outputs:
            if self.min_sqnr_db is not None and o.sqnr_db < self.min_sqnr_db:
                return False
            if self.max_top1_drop is not None and o.top1_agreement is not None:
                if 1 - o.top1_agreement > self.max_top1_drop + 1e-12:
                    return False
        return True


@dataclasses.dataclass(frozen=True)
class AutoExcludeResult:
    excluded: tuple[str, ...]
    comparison: Comparison
    target_met: bool
    rounds: int


def rank_nodes_by_added_error(float_model, comparison: Comparison, candidates: set[str]) -> list[tuple[str, float]]:
    """(node name, added NSR) for candidate nodes, worst first."""
    nsr_of = {t.name: nsr(t.sqnr_db) for t in (*comparison.layers, *comparison.outputs)}
    ranked = []
    for node in float_model.graph:
        if node.name not in candidates or not node.outputs:
            continue
        out = node.outputs[0].name
        if out not in nsr_of:
            continue
        upstream = max((nsr_of.get(v.name, 0.0) for v in node.inputs if v is not None), default=0.0)
        ranked.append((node.name, nsr_of[out] - upstream))
    ranked.sort(key=lambda item: item[1], reverse=True)
    return ranked


def auto_exclude(
    float_path: str | Path,
    quantize_fn: Callable[[tuple[str, ...]], tuple[object, object]],
    data: Callable[[], Iterable[Mapping[str, np.ndarray]]],
    target: AccuracyTarget,
    *,
    max_rounds: int = 6,
    max_samples: int | None = None,
) -> tuple[object, AutoExcludeResult]:
    """``quantize_fn(extra_excludes)`` returns ``(model, QuantizeReport)`` for
    ``float_path`` with those node names kept in float; ``data()`` yields fresh feeds.
    Returns the last quantized model and what was excluded."""
    from onnxq import modelio

    float_model = modelio.load(float_path)
    excluded: tuple[str, ...] = ()
    step = 1
    with tempfile.TemporaryDirectory(prefix="onnxq-sens-") as tmp:
        qpath = Path(tmp) / "candidate.onnx"
        for round_no in range(1, max_rounds + 2):
            model, report = quantize_fn(excluded)
            quantized_names = {d.node.name for d in report.quantized if d.node.name}
            modelio.save(model, qpath)
            comparison = compare_models(float_path, qpath, data(), max_samples=max_samples)
            if target.met_by(comparison):
                return model, AutoExcludeResult(excluded, comparison, True, round_no)
            if round_no > max_rounds:
                break
            ranked = rank_nodes_by_added_error(float_model, comparison, quantized_names)
            if not ranked:
                break
            new = tuple(name for name, _ in ranked[:step])
            logger.info("round %d: keeping %d more node(s) in float: %s", round_no, len(new), ", ".join(new))
            excluded += new
            step *= 2
    return model, AutoExcludeResult(excluded, comparison, False, round_no)
