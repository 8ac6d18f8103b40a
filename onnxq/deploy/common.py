"""Pieces every runtime check shares: input feeds, output comparison, side-by-side timing."""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from onnxq.compare import ErrorAccumulator
from onnxq.errors import CalibrationDataError, OnnxqError

__all__ = ["Runner", "input_feeds", "compare_runners", "interleaved_latency", "ort_runner", "output_names"]

logger = logging.getLogger(__name__)

Runner = Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]

_RANDOM_SEED = 0
# sizes tried, in order, for the symbolic dimensions of random inputs past the first axis
# (the batch, always 1): the first the model runs with is used. 1 alone (a 1x1 image, a
# one-sample waveform) fails detectors with strided concats and audio models that pad.
_SYMBOLIC_SIZES = (64, 16, 512, 1)
_TRIAL_MAX_BYTES = 512 << 20  # bigger models get the first size untried


def _is_image_folder(p: Path) -> bool:
    from onnxq.preprocess import IMAGE_SUFFIXES

    if not p.is_dir():
        return False
    has_images = False
    for f in p.rglob("*"):
        if f.suffix.lower() in (".npy", ".npz"):
            return False
        if f.suffix.lower() in IMAGE_SUFFIXES:
            has_images = True
    return has_images


def _is_mask(name: str) -> bool:
    return "mask" in name.lower()


def _is_token_type(name: str) -> bool:
    n = name.lower()
    return "token_type" in n or "segment" in n


_INDEX_PASS_THROUGH = frozenset({"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Identity"})


def _index_bound(model, name: str) -> int:
    """The smallest size of a constant table that input ``name`` indexes through Gather
    (directly or through Cast/Reshape-like nodes); a large number when it indexes none."""
    from onnxq import irutil

    bound = 1 << 30
    start = next((v for v in model.graph.inputs if v.name == name), None)
    todo, seen = [start] if start is not None else [], set()
    while todo:
        v = todo.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        for node, index in v.uses():
            if node.op_type in _INDEX_PASS_THROUGH and index == 0:
                todo.extend(node.outputs)
            elif node.op_type == "Gather" and index == 1:
                table = irutil.const_array(node.inputs[0])
                if table is not None and table.ndim:
                    axis = node.attributes.get_int("axis", 0)
                    bound = min(bound, int(table.shape[axis]))
    return max(bound, 1)


def input_feeds(model, data: Any = None, *, max_samples: int = 16, preprocess: str | None = None) -> tuple[list[dict], str]:
    """Up to ``max_samples`` feeds for ``model`` (an onnx_ir.Model) and where they came
    from. ``data``: None (seeded random inputs; symbolic dimensions past the batch get the first of
    64, 16, 512, 1 the model runs with), an image folder
    (ImageNet preprocessing unless ``preprocess`` says otherwise), or anything
    :func:`onnxq.data.as_calibration_data` accepts."""
    from onnxq import data as datamod

    specs = datamod.input_specs(model)
    if data is None:
        for s in specs:
            if s.shape is None:
                raise CalibrationDataError(f"input {s.name} has no known shape; give --data")
        symbolic = any(not isinstance(d, int) for s in specs for d in s.shape[1:])
        size = 1
        if symbolic:  # the first size a model runs with (one trial session for all of them)
            trial = _trial_session(model)
            size = next((n for n in _SYMBOLIC_SIZES
                         if trial is None or _runs(trial, _random_feeds(model, specs, n, 1)[0])), _SYMBOLIC_SIZES[0])
        feeds = _random_feeds(model, specs, size, max(1, min(max_samples, 4)))
        where = "random inputs (seed 0"
        if symbolic:
            where += "; symbolic sizes: " + ", ".join(f"{k} {list(v.shape)}" for k, v in feeds[0].items())
        return feeds, where + "); pass --data for real ones"
    if isinstance(data, (str, os.PathLike)) and _is_image_folder(Path(data)):
        from onnxq.preprocess import IMAGENET, from_images, parse_preprocess

        pp = parse_preprocess(preprocess, IMAGENET) if preprocess else IMAGENET
        source = from_images(data, pp)
    else:
        source = datamod.as_calibration_data(data)
    source.precheck(specs)
    feeds = list(source.feeds(specs, limit=max_samples))
    # the sources describe themselves as calibration data; here they are whatever the user checks with
    return feeds, f"{len(feeds)} samples from {source.description.removeprefix('calibration ')}"


def _trial_session(model):
    """An ORT CPU session of ``model`` to try random input sizes on; None (nothing is tried)
    for a model that needs the custom-op library, is too big to copy, or does not load."""
    import onnx_ir as ir
    import onnxruntime as ort

    if any(domain.startswith("com.onnxq") for domain in model.opset_imports):
        return None
    try:
        proto = ir.to_proto(model)
        if proto.ByteSize() > _TRIAL_MAX_BYTES:
            return None
        so = ort.SessionOptions()
        so.log_severity_level = 4
        return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - the verification itself reports a model that does not load
        logger.debug("no trial session for random input sizes: %s", str(e).splitlines()[0][:200])
        return None


def _runs(session, feed: dict) -> bool:
    """Whether ``session`` runs on ``feed``."""
    try:
        session.run(None, feed)
        return True
    except Exception as e:  # noqa: BLE001 - any refusal means: try the next size
        logger.debug("random inputs %s: %s", {k: v.shape for k, v in feed.items()}, str(e).splitlines()[0][:200])
        return False


def _random_feeds(model, specs, size: int, count: int) -> list[dict]:
    """``count`` seeded random feeds, symbolic dimensions ``size`` (the first axis 1)."""
    rng = np.random.default_rng(_RANDOM_SEED)
    names = {v.name: [getattr(d, "value", None) for d in (v.shape or ())] for v in model.graph.inputs}
    # a named dimension that is the first axis of some input is the batch wherever it appears
    # (an RNN state [layers, batch, hidden] must match its input's batch)
    batch = {dims[0] for dims in names.values() if dims and isinstance(dims[0], str)}

    def dim(s, i: int, d) -> int:
        if isinstance(d, int):
            return d
        labels = names.get(s.name, [])
        label = labels[i] if i < len(labels) else None
        return 1 if i == 0 or (label is not None and label in batch) else size

    feeds = []
    for _ in range(count):
        feed = {}
        for s in specs:
            shape = tuple(dim(s, i, d) for i, d in enumerate(s.shape))
            dtype = s.dtype or np.dtype(np.float32)
            if np.issubdtype(dtype, np.floating):
                feed[s.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_ or _is_mask(s.name):
                feed[s.name] = np.ones(shape, dtype)  # every position attended
            elif _is_token_type(s.name):
                feed[s.name] = np.zeros(shape, dtype)
            elif "position" in s.name.lower() and len(shape) >= 1:
                feed[s.name] = np.broadcast_to(np.arange(shape[-1]), shape).astype(dtype)
            else:  # ids: below the size of every table the input indexes
                feed[s.name] = rng.integers(0, min(8, _index_bound(model, s.name)), shape).astype(dtype)
        feeds.append(feed)
    return feeds


def output_names(session) -> list[str]:
    return [o.name for o in session.get_outputs()]


def ort_runner(model: str | os.PathLike | bytes, *, threads: int = 1, options=None) -> tuple[Runner, Any]:
    """An ORT CPU session as a runner (registers the onnxq op library when needed)."""
    import onnxruntime as ort

    if not isinstance(model, bytes) and str(model).endswith(".onnx"):
        import onnx

        proto = onnx.load(str(model), load_external_data=False)
        if any(o.domain == "com.onnxq" for o in proto.opset_import):
            from onnxq import runtime  # registers the onnxq custom-op library

            sess = runtime.session(model)
            return (lambda feed: sess.run(None, dict(feed))), sess
    so = options or ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    src = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return (lambda feed: sess.run(None, dict(feed))), sess


def compare_runners(
    ref: Runner, got: Runner, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    """Per output: SQNR (dB), cosine, max abs error, top-1 agreement (classifier-shaped)."""
    acc = {n: ErrorAccumulator(n) for n in names}
    for feed in feeds:
        r = ref(feed)
        g = got(feed)
        for n, a, b in zip(names, r, g):
            acc[n].update(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    out = {}
    for n, a in acc.items():
        res = a.result()
        out[n] = {
            "sqnr_db": None if math.isinf(res.sqnr_db) else round(res.sqnr_db, 3),
            "cosine": round(res.cosine, 6),
            "max_abs_error": res.max_abs_error,
            "top1_agreement": res.top1_agreement,
            "median_sample_sqnr_db": None if res.median_sample_sqnr_db is None or math.isinf(res.median_sample_sqnr_db)
            else round(res.median_sample_sqnr_db, 3),
            "dominant_sample": res.dominant_sample if res.dominated(len(feeds)) else None,
            "dominant_share": round(res.dominant_share, 4),
        }
    return out


def interleaved_latency(
    runners: Mapping[str, Runner], feed: Mapping[str, np.ndarray], *, rounds: int = 40, warmup: int = 5
) -> dict[str, float]:
    """Median milliseconds per run of each runner, timed alternately in one process so a
    noisy machine slows them alike."""
    for r in runners.values():
        for _ in range(warmup):
            r(feed)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r(feed)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def require_file(path: str | os.PathLike, what: str = "model") -> Path:
    p = Path(path)
    if not p.exists():
        raise OnnxqError(f"{what} file {p} does not exist")
    if p.is_dir():
        raise OnnxqError(f"{p} is a folder; give the path of an .onnx file")
    return p
