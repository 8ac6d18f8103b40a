"""Sensitivity-driven exclusion: keep the layers that add the most error in float until
the quantized model meets an accuracy target.

The error a node adds is estimated from one comparison run, two ways: the noise-to-signal
ratio (NSR, the inverse of linear SQNR) of its output minus the largest NSR among its
inputs, and the SQNR (dB) it loses between its inputs and its output. The top candidates
of both rankings are each tried (re-quantized from the float model and measured) and the
one that helps most is kept, round after round, until the target holds, nothing helps,
or the round limit is reached.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from onnxq.compare import INPUT_SQNR_DB, THROUGH_OPS, Comparison, compare_models, nsr, readers_through

__all__ = [
    "AccuracyTarget",
    "AutoExcludeResult",
    "rank_nodes_by_added_error",
    "rank_nodes_by_lost_db",
    "auto_exclude",
    "static_exclusion_unit",
    "quantize_static_to_target",
]

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

    def describe(self) -> str:
        parts = []
        if self.min_sqnr_db is not None:
            parts.append(f"output SQNR >= {self.min_sqnr_db:g} dB")
        if self.max_top1_drop is not None:
            parts.append(f"top-1 disagreement <= {self.max_top1_drop:.1%}")
        return " and ".join(parts)

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
    # per round: (nodes kept in float, worst output SQNR dB, worst top-1 agreement or None)
    history: tuple[tuple[int, float, float | None], ...] = ()
    # the candidates of the last round that the budget refused, when it refused them all
    # (the search stopped because nothing fits, not because nothing helps)
    over_budget: tuple[tuple[str, ...], ...] = ()
    # the candidates of the last round when none of them (nor the best two together) made the
    # outputs closer to the float model's (the search stopped because nothing helps)
    no_gain: tuple[tuple[str, ...], ...] = ()

    def summary(self) -> str:
        worst = min(self.comparison.outputs, key=lambda o: o.sqnr_db)
        agree = [o.top1_agreement for o in self.comparison.outputs if o.top1_agreement is not None]
        text = f"output SQNR {worst.sqnr_db:.1f} dB"
        if agree:
            text += f", top-1 agreement {min(agree):.1%}"
        return text


def _charges(float_model, comparison: Comparison, candidates: set[str]):
    """(node to keep in float, measured tensor) pairs: each measured layer is charged to the
    node ``onnxq compare`` names for it (a Conv whose BatchNormalization was folded in, the
    MatMul before a bias Add) when that node is a candidate; a tensor a float op computes
    (a HardSwish, a Softmax) loses its accuracy where it is quantized for the candidates
    that read it, so it is charged to them (through Relu/Clip and pass-through ops). Model
    outputs are charged to the node that computes them."""
    readers = readers_through(float_model, {t.name for t in comparison.layers if t.node not in candidates},
                              lambda n: n.name in candidates)
    for t in comparison.layers:
        if t.node in candidates:
            yield t.node, t
        else:
            for name in readers[t.name]:
                yield name, t
    producers = {v.name: n for n in float_model.graph for v in n.outputs if v.name}
    for o in comparison.outputs:
        p = producers.get(o.name)
        if p is not None and p.name in candidates:
            yield p.name, o


def _ranked(float_model, comparison: Comparison, candidates: set[str], measure) -> list[tuple[str, float]]:
    best: dict[str, float] = {}
    for name, t in _charges(float_model, comparison, candidates):
        value = measure(t)
        if name not in best or value > best[name]:
            best[name] = value
    return sorted(best.items(), key=lambda item: item[1], reverse=True)


def _upstream_of_output(float_model, comparison: Comparison):
    """Output tensor name -> (worst input SQNR dB capped, largest input NSR), from the
    measured inputs of the node that computes it (outputs carry no added figures)."""
    nsr_of = {t.name: nsr(t.sqnr_db) for t in (*comparison.layers, *comparison.outputs)}
    db_of = {t.name: min(t.sqnr_db, INPUT_SQNR_DB) for t in (*comparison.layers, *comparison.outputs)}
    out = {}
    for node in float_model.graph:
        for v in node.outputs:
            if v.name in {o.name for o in comparison.outputs}:
                ins = [i for i in node.inputs if i is not None]
                out[v.name] = (min((db_of.get(i.name, INPUT_SQNR_DB) for i in ins), default=INPUT_SQNR_DB),
                               max((nsr_of.get(i.name, 0.0) for i in ins), default=0.0))
    return out


def rank_nodes_by_added_error(float_model, comparison: Comparison, candidates: set[str]) -> list[tuple[str, float]]:
    """(node name, added NSR) for candidate nodes, worst first."""
    up = _upstream_of_output(float_model, comparison)
    outputs = {o.name for o in comparison.outputs}

    def added(t) -> float:
        return nsr(t.sqnr_db) - up[t.name][1] if t.name in outputs and t.name in up else t.added_nsr

    return _ranked(float_model, comparison, candidates, added)


def rank_nodes_by_lost_db(float_model, comparison: Comparison, candidates: set[str]) -> list[tuple[str, float]]:
    """(node name, SQNR lost in dB from its inputs to its output) for candidate nodes, worst
    first: the measure of ``Comparison.worst_layers``. It finds the early layers whose noise
    every later layer carries; added NSR finds late layers that add much noise in absolute
    terms (and layers that merely amplify their inputs' noise): each misses what the other
    finds, so the search below tries the top of both."""
    up = _upstream_of_output(float_model, comparison)
    outputs = {o.name for o in comparison.outputs}

    def lost(t) -> float:
        return up[t.name][0] - min(t.sqnr_db, INPUT_SQNR_DB) if t.name in outputs and t.name in up else t.added_db

    return _ranked(float_model, comparison, candidates, lost)


def _score(comparison: Comparison) -> tuple[float, float]:
    """(worst output SQNR dB, worst top-1 agreement or 1): higher is better. SQNR first:
    on a few calibration samples top-1 agreement moves in big steps, by chance."""
    agree = [o.top1_agreement for o in comparison.outputs if o.top1_agreement is not None]
    return (min(o.sqnr_db for o in comparison.outputs), min(agree) if agree else 1.0)


def auto_exclude(
    float_path: str | Path,
    quantize_fn: Callable[[tuple[str, ...]], tuple[object, object]],
    data: Callable[[], Iterable[Mapping[str, np.ndarray]]],
    target: AccuracyTarget,
    *,
    max_rounds: int = 6,
    max_samples: int | None = None,
    unit: Callable[[object, str, set[str]], tuple[str, ...]] | None = None,
    budget: Callable[[tuple[str, ...]], bool] | None = None,
    trials: int = 3,
) -> tuple[object, AutoExcludeResult]:
    """``quantize_fn(extra_excludes)`` returns ``(model, QuantizeReport)`` for
    ``float_path`` with those node names kept in float; ``data()`` yields fresh feeds.
    ``unit(float_model, node_name, quantized_names)``: the nodes to keep in float together
    when ``node_name`` is chosen (default: the node alone). ``budget(excluded)``: False when
    that set may not be kept in float (e.g. too much compute): candidates that would break
    it are skipped.

    Greedy and measured: each round compares the current model layer by layer, takes the
    ``trials`` worst candidates by SQNR lost and the ``trials`` worst by added NSR, quantizes
    with each one kept in float in turn, and keeps the one that helps most (output SQNR,
    then top-1 agreement); it stops when the target holds, when no candidate helps, or after
    ``max_rounds`` rounds. Returns the last (= best) model and what was excluded."""
    from onnxq import modelio

    float_model = modelio.load(float_path)
    excluded: tuple[str, ...] = ()
    history: list[tuple[int, float, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="onnxq-sens-") as tmp:
        qpath = Path(tmp) / "candidate.onnx"

        def measure(extra: tuple[str, ...], per_layer: bool = True):
            model, report = quantize_fn(extra)
            modelio.save(model, qpath)
            comparison = compare_models(float_path, qpath, data(), max_samples=max_samples, per_layer=per_layer)
            return model, report, comparison

        model, report, comparison = measure(excluded)
        round_no = 1
        while True:
            score = _score(comparison)
            history.append((len(excluded), score[0], score[1] if any(
                o.top1_agreement is not None for o in comparison.outputs) else None))
            if target.met_by(comparison):
                return model, AutoExcludeResult(excluded, comparison, True, round_no, tuple(history))
            if round_no > max_rounds:
                break
            if not comparison.layers:  # the chosen trial measured outputs only: rank on layers
                comparison = measure(excluded)[2]
            quantized_names = {d.node.name for d in report.quantized if d.node.name}
            units: list[tuple[str, ...]] = []
            refused: list[tuple[str, ...]] = []
            for ranking in (rank_nodes_by_lost_db, rank_nodes_by_added_error):
                taken = 0
                for name, _ in ranking(float_model, comparison, quantized_names):
                    if taken >= trials:
                        break
                    members = unit(float_model, name, quantized_names) if unit is not None else (name,)
                    fresh = tuple(m for m in members if m not in excluded)
                    if not fresh or len(quantized_names - set(fresh)) < 1:  # keep something quantized
                        continue
                    if budget is not None and not budget(excluded + fresh):
                        if fresh not in refused:
                            refused.append(fresh)
                        continue
                    taken += 1
                    if fresh not in units:
                        units.append(fresh)
            if not units:
                return model, AutoExcludeResult(excluded, comparison, False, round_no, tuple(history), tuple(refused))
            tried = []
            for fresh in units:
                tried.append((fresh, measure(excluded + fresh, per_layer=False)))
            tried.sort(key=lambda t: _score(t[1][2]), reverse=True)
            best = tried[0]
            if _score(best[1][2]) <= score and len(tried) > 1:
                # no node helps alone: a stem conv and the depthwise conv after it can (PP-LCNet)
                pair = best[0] + tuple(m for m in tried[1][0] if m not in best[0])
                if len(quantized_names - set(pair)) >= 1 and (budget is None or budget(excluded + pair)):
                    trial = measure(excluded + pair, per_layer=False)
                    if _score(trial[2]) > _score(best[1][2]):
                        best = (pair, trial)
            if _score(best[1][2]) <= score:  # nothing within the budget helps
                return model, AutoExcludeResult(excluded, comparison, False, round_no, tuple(history),
                                                over_budget=tuple(refused), no_gain=tuple(u for u, _ in tried))
            excluded += best[0]
            model, report, comparison = best[1]
            logger.info("round %d: keeping %s in float (output SQNR %.1f dB)", round_no, ", ".join(best[0]), _score(comparison)[0])
            round_no += 1
    return model, AutoExcludeResult(excluded, comparison, False, round_no, tuple(history))


KEPT_BY_SEARCH = "kept in float by the --target-sqnr / --max-drop search"


def static_exclusion_unit(float_model, name: str, quantized: set[str]) -> tuple[str, ...]:
    """For int8-static: a node and the quantized nodes producing its activation inputs
    (through Relu/Clip and pass-through ops). An excluded node's inputs stay float, so
    their producers can no longer be fused into int8 ops and run in float anyway (with
    dequantized int8 weights): keeping them in float too buys their accuracy at no
    further speed cost."""
    node = next((n for n in float_model.graph if n.name == name), None)
    if node is None:
        return (name,)
    out = [name]
    for v in node.inputs:
        if v is None or v.const_value is not None:
            continue
        p = v.producer()
        while p is not None and p.op_type in THROUGH_OPS and p.name not in quantized and p.inputs:
            p = p.inputs[0].producer() if p.inputs[0] is not None else None
        if p is not None and p.name in quantized and p.name not in out:
            out.append(p.name)
    return tuple(out)


def quantize_static_to_target(
    model_path: str | Path,
    recipe,
    data,
    target: AccuracyTarget,
    *,
    max_rounds: int = 6,
    max_samples: int | None = None,
    max_float_share: float = 0.15,
    max_float_weight_share: float = 0.02,
):
    """int8-static that keeps the nodes adding the most error in float (each with the
    quantized producers of its inputs) until ``target`` holds on the calibration data
    itself, keeping at most ``max_float_share`` of the Conv/Gemm/MatMul multiply-adds in
    float (the int8 model must stay fast) and at most ``max_float_weight_share`` of their
    weights (float weights are 4x the bytes: 2 % keeps an int8 file of ~28.5 % under 30 %). Returns ``(model, QuantizeReport,
    AutoExcludeResult)``; the report's notes say what was kept in float and what was
    measured."""
    from onnxq import api, modelio
    from onnxq.data import as_calibration_data, input_specs

    source = as_calibration_data(data, batch_size=recipe.batch_size)
    float_model = modelio.load(model_path)
    specs = input_specs(float_model)
    source.precheck(specs)

    last: dict[str, object] = {}

    def quantize_fn(extra: tuple[str, ...]):
        r = dataclasses.replace(recipe, exclude=tuple(recipe.exclude) + tuple(re.escape(n) for n in extra))
        model, report = api.quantize_with_report(model_path, r, source)
        last[tuple(extra)] = report
        return model, report

    def feeds():
        return source.feeds(specs, limit=recipe.max_samples)

    macs, params = multiply_adds(model_path, with_weights=True)
    total = sum(macs.values()) or 1.0
    total_params = sum(params.values()) or 1.0

    def budget(excluded: tuple[str, ...]) -> bool:
        chosen = set(excluded)
        return (
            sum(macs.get(n, 0.0) for n in chosen) <= max_float_share * total
            and sum(params.get(n, 0.0) for n in chosen) <= max_float_weight_share * total_params
        )

    model, result = auto_exclude(
        model_path, quantize_fn, feeds, target, max_rounds=max_rounds, max_samples=max_samples,
        unit=static_exclusion_unit, budget=budget,
    )
    report = last[tuple(result.excluded)]
    from onnxq.passes.insert_qdq import EXCLUDED
    from onnxq.selection import Decision

    chosen = set(result.excluded)
    report = dataclasses.replace(report, decisions=tuple(  # the search's choices are not the user's --exclude
        Decision(d.node, False, KEPT_BY_SEARCH) if d.reason == EXCLUDED and d.node.name in chosen else d
        for d in report.decisions))
    what = "met" if result.target_met else "NOT met"
    note = (
        f"sensitivity: target {target.describe()} {what} on the calibration data (best of {len(result.history)} "
        f"round(s): round {result.rounds}): "
        f"{result.summary()}; kept {len(result.excluded)} node(s) in float"
    )
    if result.excluded:
        share = sum(macs.get(n, 0.0) for n in result.excluded) / total
        wshare = sum(params.get(n, 0.0) for n in result.excluded) / total_params
        note += (
            f" ({share:.0%} of the multiply-adds, budget {max_float_share:.0%}; {wshare:.1%} of the weights, "
            f"budget {max_float_weight_share:.0%}): " + ", ".join(result.excluded)
        )
    if result.over_budget:  # say what the budget refused and what would let the search try it
        smallest = min(result.over_budget, key=lambda u: sum(macs.get(n, 0.0) for n in u))
        needs_macs = sum(macs.get(n, 0.0) for n in (*result.excluded, *smallest)) / total
        needs_w = sum(params.get(n, 0.0) for n in (*result.excluded, *smallest)) / total_params
        note += (
            (f"; the candidates within the budget did not help, and {len(result.over_budget)} other(s) were over "
             "the float budget" if result.no_gain else "; every candidate is over the float budget")
            + f" ({max_float_share:.0%} of the multiply-adds, "
            f"{max_float_weight_share:.0%} of the weights): the cheapest, {', '.join(smallest)}, would make it "
            f"{needs_macs:.0%} / {needs_w:.1%}; raise --float-budget to {max(needs_macs, needs_w) * 100:.0f} or more "
            "to let the search try it"
        )
    if result.no_gain:
        note += (
            f"; the search stopped: no candidate kept in float, alone or the best two together, brought the outputs "
            f"closer to the float model's (tried {'; '.join(', '.join(u) for u in result.no_gain[:6])})"
        )
    if not result.target_met:  # say so when the search could not see some of the quantized nodes
        from onnxq import irutil

        in_bodies = {n.name for g in irutil.iter_graphs(float_model.graph) if g is not float_model.graph for n in g
                     if n.name}
        nested = [d.name for d in report.quantized if d.name in in_bodies]
        if nested:
            note += (
                f"; {len(nested)} of the quantized nodes sit inside If/Loop bodies, which this search does not "
                f"measure or try: keep them in float with --exclude NAME (e.g. {nested[0]})"
            )
    trail = "; ".join(
        f"{n} float: {db:.1f} dB" + (f", {a:.1%}" if a is not None else "") for n, db, a in result.history
    )
    notes = (*report.notes, note, f"sensitivity rounds (nodes kept in float: output SQNR, top-1 agreement): {trail}")
    return model, dataclasses.replace(report, notes=notes), result


def multiply_adds(model_path: str | Path, *, with_weights: bool = False):
    """Node name -> multiply-adds per sample of its Conv/ConvTranspose/Gemm/MatMul with a
    constant weight (from inferred shapes; 1 row where unknown); with ``with_weights``,
    also node name -> number of weights."""
    from onnxq import irutil, modelio
    from onnxq.calib.static import _infer_shapes

    model = modelio.load(model_path)
    _infer_shapes(model)
    out: dict[str, float] = {}
    weights: dict[str, float] = {}
    for node in model.graph:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.inputs) < 2 or not node.name:
            continue
        w = irutil.const_array(node.inputs[1])
        if w is None:
            continue
        y = node.outputs[0]
        positions = 1.0
        if y.shape is not None:
            dims = list(y.shape)
            spatial = dims[2:] if node.op_type in ("Conv", "ConvTranspose") else dims[1:-1]
            for d in spatial:
                positions *= d if isinstance(d, int) else 1
        out[node.name] = float(w.size) * positions
        weights[node.name] = float(w.size)
    return (out, weights) if with_weights else out
