"""Streaming calibration: one ORT session over the probe model, feeds streamed through it,
observers updated after each run. Nothing per sample is kept."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from onnxq import irutil
from onnxq.calib.observers import ChannelMaxObserver, ChannelMeanObserver, Observer
from onnxq.calib.probe import DEFAULT_SAMPLE_SIZE, build_probe_model
from onnxq.data import (
    as_calibration_data, batched, feed_rows, float32_interface, input_specs, ort_failure, ort_feed,
)
from onnxq.errors import CalibrationDataError

__all__ = ["calibrate", "CalibrationStats"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CalibrationStats:
    feeds: int  # number of ORT runs
    rows: int  # samples along the batch axis (as fed)
    seconds: float
    tensors: int


# initializers at least this large are handed to ORT as OrtValues instead of being copied
# into the serialized probe model (serializing and parsing ~100 MB of weights costs more
# than the session itself)
_EXTERNAL_BYTES = 1024
_SAMPLE_BATCH = 8


def _session(model: ir.Model, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 4  # a refused sample comes back as an exception (ort_failure says it in one line)
    float32_interface(model)
    _load_external_tensors(model)
    names, arrays = _detach_initializers(model)
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        _reattach_initializers(model, names, arrays)
    data = proto.SerializeToString()
    del proto
    keep = []
    if names:
        keep = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()]
        so.add_external_initializers(list(arrays), keep)
    try:
        session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise CalibrationDataError(
            f"ONNX Runtime cannot run the model for calibration: {str(e).splitlines()[0][:300]}"
        ) from None
    session._onnxq_keep = keep  # the OrtValues share the arrays' memory: keep both alive
    session._onnxq_arrays = arrays
    return session


def _load_external_tensors(model: ir.Model) -> None:
    """Read into memory the external-data tensors that _detach_initializers does not hand
    to ORT itself (small ones, subgraphs', inputs'): the model goes to ORT as bytes, which
    would resolve their relative file paths against the working directory."""
    for graph in irutil.iter_graphs(model.graph):
        for name, value in graph.initializers.items():
            t = value.const_value
            handed_over = graph is model.graph and t is not None and t.nbytes >= _EXTERNAL_BYTES and (
                not value.is_graph_input())
            if isinstance(t, ir.ExternalTensor) and not handed_over:
                value.const_value = ir.tensor(np.array(t.numpy(), copy=True), name=name)  # not a view of its mmap


def _detach_initializers(model: ir.Model):
    """Swap large float/int initializers of the root graph for external-data stubs (no copy
    when serializing). Returns what was swapped, to put back and to hand to ORT."""
    names: dict[str, object] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, value in model.graph.initializers.items():
        t = value.const_value
        if t is None or value.is_graph_input() or t.nbytes < _EXTERNAL_BYTES:
            continue
        if not value.uses() and not value.is_graph_output():
            continue  # ORT drops unused initializers before it would look for this one
        try:
            a = np.ascontiguousarray(t.numpy())
        except Exception:  # pragma: no cover - a tensor type numpy cannot hold: keep it inline
            continue
        if a.dtype.kind not in "fiub" or a.dtype.itemsize > 8:
            continue
        stub = ir.ExternalTensor(
            location="onnxq-calibration-initializer.bin", offset=0, length=a.nbytes,
            dtype=t.dtype, shape=t.shape, name=name,
        )
        names[name] = t
        arrays[name] = a
        value.const_value = stub
    return names, arrays


def _reattach_initializers(model: ir.Model, names, arrays) -> None:
    for name, tensor in names.items():
        model.graph.initializers[name].const_value = tensor


class _PackedAccumulator:
    """Running per-channel statistics of one packed output [N, total, 1, ...]: the max over
    samples of the finite values (extremes outputs) and the sum and count of the finite
    values (means outputs), with the number of non-finite entries per position."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.max: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.count: np.ndarray | None = None
        self.bad: np.ndarray | None = None
        self.rows = 0.0

    def update(self, out: np.ndarray, rows: int) -> None:
        x = np.asarray(out, dtype=np.float32)
        x = x.reshape(x.shape[0] if x.ndim else 1, -1)
        finite = np.isfinite(x)
        if self.max is None:
            n = x.shape[1]
            self.max = np.full(n, -np.inf, np.float32)
            self.sum = np.zeros(n, np.float64)
            self.count = np.zeros(n, np.float64)
            self.bad = np.zeros(n, np.int64)
        if finite.all():
            self.max = np.maximum(self.max, x.max(axis=0))
            self.sum += x.sum(axis=0, dtype=np.float64)
            self.count += x.shape[0]
        else:
            self.bad += (~finite).sum(axis=0)
            self.max = np.maximum(self.max, np.where(finite, x, -np.inf).max(axis=0))
            self.sum += np.where(finite, x, 0).sum(axis=0, dtype=np.float64)
            self.count += finite.sum(axis=0)
        self.rows += rows

    def max_of(self, start: int, stop: int) -> tuple[float, int]:
        """(max over the segment's channels, non-finite entries seen there)."""
        seg = self.max[start:stop]
        return (float(seg.max()) if seg.size else -np.inf), int(self.bad[start:stop].sum())

    def channels(self, start: int, stop: int, kind: str) -> np.ndarray:
        if kind == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                return (self.sum[start:stop] / self.count[start:stop])[None, :]
        seg = self.max[start:stop].astype(np.float64)
        return np.where(np.isfinite(seg), seg, np.nan)[None, :]


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
    probe_model, probes, mean_probes, packed = build_probe_model(
        model, wanted, sample_size=sample_size,
        channel_stats={key: (o.axis, o.rank, o.channels) for key, o in stats_wanted.items()},
        nonnegative=frozenset(nonnegative),
        approximate=frozenset(name for name, obs in observers.items() if not obs.exact_extremes),
    )
    session = _session(probe_model, threads)
    del probe_model
    out_names: list[str] = []
    index: dict[str, int] = {}

    def slot(name: str | None) -> int | None:
        if name is None:
            return None
        if name not in index:
            index[name] = len(out_names)
            out_names.append(name)
        return index[name]

    plan = [(observers[name], probes[name]) for name in observers]
    # legacy probes: per-run scalars (and samples); packed ones: samples per run, extremes
    # accumulated as vectors (max is associative: exact) and handed over once at the end
    slots = [(obs, slot(pr.min_output), slot(pr.max_output), slot(pr.sample_output)) for obs, pr in plan]
    acc = {name: _PackedAccumulator(slot(name)) for name in packed.outputs}
    mean_slots = [
        (obs, slot(mean_probes[key].output)) for key, obs in stats_wanted.items() if key in mean_probes
    ]
    logger.info("calibrating %d tensors (%d outputs) with %s", len(observers), len(out_names), source.description)

    n_feeds = n_rows = 0
    # samples of sample-only observers, handed over a few runs at a time (one observer call
    # per batch of runs instead of one per run; memory stays bounded by the batch)
    pending: list[list[np.ndarray]] = [[] for _ in slots]

    def flush_samples() -> None:
        for (obs, *_), buf in zip(slots, pending):
            if buf:
                obs.update(buf[0] if len(buf) == 1 else np.concatenate([b.reshape(-1) for b in buf]))
                buf.clear()

    def run(feed: dict[str, np.ndarray]) -> None:
        nonlocal n_feeds, n_rows
        try:
            outs = session.run(out_names, ort_feed(feed))
        except Exception as e:
            raise ort_failure(n_feeds, e) from None
        rows = feed_rows(feed)
        for n, (obs, i, j, k) in enumerate(slots):
            sample = outs[k] if k is not None else None
            if j is None:  # extremes packed (handed over at the end) or taken from the sample
                if sample is not None:
                    pending[n].append(sample)
                continue
            bottom = np.zeros((), np.float32) if i is None else outs[i]
            obs.update(sample, vmin=bottom, vmax=outs[j])
        if n_feeds % _SAMPLE_BATCH == _SAMPLE_BATCH - 1:
            flush_samples()
        for a in acc.values():
            a.update(outs[a.slot], rows)
        for obs, k in mean_slots:
            obs.update(outs[k], weight=rows)
        n_feeds += 1
        n_rows += rows

    run(first)
    for feed in feeds:
        run(feed)
    flush_samples()
    for name, pr in probes.items():
        if not pr.packed or name not in observers:
            continue
        out, a, z = packed.segments[(name, "max")]
        top, bad_top = acc[out].max_of(a, z)
        if (name, "negmin") in packed.segments:
            out, a, z = packed.segments[(name, "negmin")]
            neg, bad_bottom = acc[out].max_of(a, z)
            bottom = -neg
        else:
            bottom, bad_bottom = 0.0, 0
        obs = observers[name]
        obs.nonfinite += bad_top + bad_bottom
        if np.isfinite(top) and np.isfinite(bottom):
            obs.update(None, vmin=np.float64(bottom), vmax=np.float64(top))
    for (name, kind), obs in stats_wanted.items():
        key = (name, "chmax" if kind == "max" else kind)
        if key not in packed.segments:
            continue
        out, a, z = packed.segments[key]
        obs.update(acc[out].channels(a, z, kind), weight=acc[out].rows if kind == "mean" else 1.0)
    seconds = time.perf_counter() - t0
    logger.info("calibration: %d runs, %.2f s", n_feeds, seconds)
    return CalibrationStats(n_feeds, n_rows, seconds, len(observers))
