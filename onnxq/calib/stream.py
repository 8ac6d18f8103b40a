"""Streaming calibration: one ORT session over the probe model, feeds streamed through it,
observers updated after each run. Nothing per sample is kept."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from onnxq.calib.observers import ChannelMaxObserver, ChannelMeanObserver, Observer
from onnxq.calib.probe import DEFAULT_SAMPLE_SIZE, build_probe_model
from onnxq.data import as_calibration_data, batched, input_specs
from onnxq.errors import CalibrationDataError

__all__ = ["calibrate", "CalibrationStats"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CalibrationStats:
    feeds: int  # number of ORT runs
    rows: int  # samples along the batch axis (as fed)
    seconds: float
    tensors: int


def _session(model: ir.Model, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    proto = ir.serde.serialize_model(model)
    data = proto.SerializeToString()
    del proto
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise CalibrationDataError(
            f"ONNX Runtime cannot run the model for calibration: {str(e).splitlines()[0][:300]}"
        ) from None


def _pairs(channel_stats) -> list[tuple[str, object]]:
    """(tensor, observer) pairs from a mapping whose values are an observer or a list."""
    out = []
    for name, obs in (channel_stats or {}).items():
        for o in obs if isinstance(obs, (list, tuple)) else [obs]:
            out.append((name, o))
    return out


def calibrate(
    model: ir.Model,
    observers: Mapping[str, Observer],
    data: Any,
    *,
    batch_size: int = 1,
    max_samples: int = 0,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    threads: int = 0,
    channel_stats: Mapping[str, ChannelMeanObserver | ChannelMaxObserver] | None = None,
    nonnegative: frozenset[str] = frozenset(),
) -> CalibrationStats:
    """Run ``data`` through ``model`` and update ``observers`` (tensor name -> observer; one
    observer may watch several tensors). ``data``: anything :func:`onnxq.data.as_calibration_data`
    takes. ``channel_stats``: tensor name -> a per-channel mean or max observer (bias correction,
    channel equalization). ``nonnegative``: tensors known to be >= 0 (Relu/Clip outputs),
    whose minimum is taken as 0 without a reduction. Problems with the data raise CalibrationDataError before the session is built
    (file sources) or at the offending sample (iterables)."""
    t0 = time.perf_counter()
    specs = input_specs(model)
    source = as_calibration_data(data, batch_size=batch_size)
    source.precheck(specs)
    feeds = batched(source.feeds(specs, limit=max_samples), specs, batch_size)
    try:
        first = next(feeds)
    except StopIteration:  # pragma: no cover - feeds() raises on empty sources
        raise CalibrationDataError(f"{source.description} holds no samples") from None

    wanted = {name: obs.needs_samples for name, obs in observers.items()}
    stats_wanted = {(name, obs.kind): obs for name, obs in _pairs(channel_stats)}
    probe_model, probes, mean_probes = build_probe_model(
        model, wanted, sample_size=sample_size,
        channel_stats={key: (o.axis, o.rank, o.channels) for key, o in stats_wanted.items()},
        nonnegative=frozenset(nonnegative),
    )
    session = _session(probe_model, threads)
    del probe_model
    plan = [(observers[name], probes[name]) for name in observers]
    out_names: list[str] = []
    slots = []
    for obs, pr in plan:
        i = len(out_names)
        out_names += [pr.min_output, pr.max_output]
        j = None
        if pr.sample_output is not None:
            j = len(out_names)
            out_names.append(pr.sample_output)
        slots.append((obs, i, j))
    mean_slots = []
    for key, obs in stats_wanted.items():
        mean_slots.append((obs, len(out_names)))
        out_names.append(mean_probes[key].output)
    logger.info("calibrating %d tensors (%d outputs) with %s", len(observers), len(out_names), source.description)

    n_feeds = n_rows = 0

    def run(feed: dict[str, np.ndarray]) -> None:
        nonlocal n_feeds, n_rows
        try:
            outs = session.run(out_names, feed)
        except Exception as e:
            raise CalibrationDataError(
                f"ONNX Runtime failed on calibration sample {n_feeds}: {str(e).splitlines()[0][:300]}"
            ) from None
        for obs, i, j in slots:
            obs.update(outs[j] if j is not None else None, vmin=outs[i], vmax=outs[i + 1])
        first_input = next(iter(feed.values()), None)
        rows = first_input.shape[0] if first_input is not None and first_input.ndim else 1
        for obs, k in mean_slots:
            obs.update(outs[k], weight=rows)
        n_feeds += 1
        n_rows += rows

    run(first)
    for feed in feeds:
        run(feed)
    seconds = time.perf_counter() - t0
    logger.info("calibration: %d runs, %.2f s", n_feeds, seconds)
    return CalibrationStats(n_feeds, n_rows, seconds, len(observers))
