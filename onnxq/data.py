"""Calibration data: where samples come from, and the checks they pass before anything runs.

A *feed* is one ``{input_name: ndarray}`` dict that an ORT session can run. Sources:

- a stacked ``.npz`` (key = input name, first axis = samples). Per input, an array whose
  rank equals the input's rank is batched along its first axis (feed ``a[i:i+b]``); an
  array of rank + 1 holds one sample per index (feed ``a[i]``), so a rank-0 input is
  stored as shape ``(N,)``;
- a folder of ``.npz`` / ``.npy`` files, one sample each (``.npy`` only for single-input
  models), searched recursively in sorted order;
- in Python, any iterable of feeds, or a zero-argument callable returning a fresh iterable
  (re-iterable); or a :class:`CalibrationData`.

Inside a feed, an array of the input's rank is fed as it is; one of rank - 1 gets a
leading batch axis of 1. Inputs of varying shapes are fine wherever the model's input
dimension is symbolic.

Every problem (unknown or missing input name, dtype, rank, a static dimension, NaN/Inf,
an empty source) is a :class:`~onnxq.errors.CalibrationDataError` naming the sample.
File sources are checked completely before the calibration session is built; samples from
Python iterables are checked one by one as they arrive (the first before the session is
built).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import ml_dtypes
import numpy as np

from onnxq.errors import CalibrationDataError

__all__ = [
    "InputSpec",
    "CalibrationData",
    "as_calibration_data",
    "from_npz",
    "from_folder",
    "from_iterable",
    "input_specs",
    "check_feed",
    "batched",
]

logger = logging.getLogger(__name__)

_NUMPY_OF_ONNX = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64, 16: ml_dtypes.bfloat16,
}
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _astype_hint(dtype: np.dtype) -> str:
    return "a.astype(ml_dtypes.bfloat16)" if dtype == BFLOAT16 else f"a.astype(np.{dtype.name})"


def _saved_bfloat16(a: np.ndarray, spec: InputSpec) -> np.ndarray:
    """numpy saves ml_dtypes bfloat16 arrays (.npy/.npz) as 2-byte void: read them back as
    bfloat16 where the model wants bfloat16."""
    return a.view(BFLOAT16) if spec.dtype == BFLOAT16 and a.dtype == np.dtype("V2") else a


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind in "fc" or a.dtype == BFLOAT16


def feed_rows(feed: Mapping[str, np.ndarray]) -> int:
    """Samples in one feed: the first input's leading dimension (1 for a scalar or no input)."""
    first = next(iter(feed.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def ort_failure(sample: int, error: Exception) -> CalibrationDataError:
    """One line for ONNX Runtime refusing calibration sample ``sample``, with the likely cause."""
    import re

    text = str(error)
    line = next((ln for ln in text.splitlines() if ln.strip() and "[E:onnxruntime" not in ln), text)[:300]
    m = re.search(r"idx=(-?\d+) must be within the inclusive range \[(-?\d+),(-?\d+)\]", text)
    if m:
        hint = (f"an index {m.group(1)} past a table of {int(m.group(3)) + 1} rows: token ids beyond the model's "
                "vocabulary? (for --calib-text, is --tokenizer the model's own tokenizer?)")
    else:
        hint = "a shape or value the model cannot take (for --calib-text, --calib-seq-len sets the window length)"
    return CalibrationDataError(f"ONNX Runtime failed on calibration sample {sample}: {line}; {hint}")


def ort_feed(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feed`` as ORT's Python API takes it: bfloat16 arrays (which it cannot take) as their
    exact float32 values, for sessions over :func:`float32_interface` models."""
    return {k: (a.astype(np.float32) if a.dtype == BFLOAT16 else a) for k, a in feed.items()}


def float32_interface(model, outputs: bool = False) -> None:
    """Retype, in place, the bfloat16 inputs of an ``onnx_ir.Model`` that only Cast nodes read
    (every bfloat16 input after WidenFloat16Pass) to float32, so that ORT's Python API can feed
    them; fed with :func:`ort_feed`, the model computes what it computed before. ``outputs``:
    also give each bfloat16 output a Cast to float32 under its name (ORT's Python API returns
    no bfloat16 arrays). For probe, calibration and comparison copies of a model, never for
    the model written out."""
    import onnx_ir as ir

    if outputs:
        graph = model.graph
        for i, v in enumerate(list(graph.outputs)):
            if v.dtype != ir.DataType.BFLOAT16:
                continue
            name, v.name = v.name, f"{v.name}/bfloat16"
            cast = ir.node("Cast", [v], attributes={"to": ir.DataType.FLOAT}, name=f"{name}/to_float32")
            cast.outputs[0].name, cast.outputs[0].dtype, cast.outputs[0].shape = name, ir.DataType.FLOAT, v.shape
            graph.append(cast)
            graph.outputs[i] = cast.outputs[0]
    for v in model.graph.inputs:
        if v.name in model.graph.initializers:  # a weight (keep_initializers_as_inputs): its data stays bfloat16
            continue
        if v.dtype == ir.DataType.BFLOAT16 and all(n.op_type == "Cast" for n, _ in v.uses()):
            v.type = ir.TensorType(ir.DataType.FLOAT)  # a new type: a clone shares the original's type object


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A model input as the checks see it: name, numpy dtype, shape (None = symbolic)."""

    name: str
    dtype: np.dtype | None
    shape: tuple[int | None, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        return f"{self.name} {self.dtype if self.dtype is not None else '?'}{dims}"


def input_specs(model) -> list[InputSpec]:
    """The real inputs of an ``onnx_ir.Model`` (initializers that are also inputs excluded)."""
    specs = []
    for v in model.graph.inputs:
        if v.name in model.graph.initializers:
            continue
        dtype = None
        if v.dtype is not None and int(v.dtype) in _NUMPY_OF_ONNX:
            dtype = np.dtype(_NUMPY_OF_ONNX[int(v.dtype)])
        shape = None
        if v.shape is not None:
            # exporters (paddle2onnx) write a dynamic dimension as the value -1
            shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in v.shape)
        specs.append(InputSpec(v.name, dtype, shape))
    return specs


def _as_array(value: Any, where: str, name: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except Exception as e:  # ragged lists etc.
        raise CalibrationDataError(f"{where}: input {name!r} is not an array ({type(value).__name__}: {e})") from None


def check_feed(feed: Mapping[str, Any], specs: Sequence[InputSpec], where: str) -> dict[str, np.ndarray]:
    """Validate one feed against the model inputs and return it normalized (batch axis
    added where the sample has rank - 1). Raises CalibrationDataError."""
    if not isinstance(feed, Mapping):
        raise CalibrationDataError(
            f"{where}: expected a dict {{input_name: array}}, got {type(feed).__name__}"
        )
    expected = {s.name: s for s in specs}
    unknown = sorted(set(feed) - set(expected))
    if unknown:
        raise CalibrationDataError(
            f"{where}: unknown input name(s) {', '.join(map(repr, unknown))}; the model's inputs are "
            + ", ".join(s.describe() for s in specs)
        )
    missing = sorted(set(expected) - set(feed))
    if missing:
        raise CalibrationDataError(
            f"{where}: missing input(s) {', '.join(map(repr, missing))}; the model's inputs are "
            + ", ".join(s.describe() for s in specs)
        )
    out = {}
    for name, spec in expected.items():
        a = _saved_bfloat16(_as_array(feed[name], where, name), spec)
        if spec.dtype is not None and a.dtype != spec.dtype:
            raise CalibrationDataError(
                f"{where}: input {name!r} is {a.dtype} but the model expects {spec.dtype} "
                f"(convert it, e.g. {_astype_hint(spec.dtype)})"
            )
        if spec.rank is not None:
            if a.ndim == spec.rank - 1 and spec.rank >= 1:
                a = a[None]
            elif a.ndim != spec.rank:
                raise CalibrationDataError(
                    f"{where}: input {name!r} has rank {a.ndim} (shape {a.shape}) but the model expects rank "
                    f"{spec.rank} ({spec.describe()})"
                )
            for axis, (d, want) in enumerate(zip(a.shape, spec.shape)):
                if want is not None and d != want:
                    raise CalibrationDataError(
                        f"{where}: input {name!r} has shape {a.shape}; dimension {axis} must be {want} "
                        f"({spec.describe()})"
                    )
        if _is_float(a) and not np.all(np.isfinite(a)):
            raise CalibrationDataError(f"{where}: input {name!r} contains NaN or Inf")
        out[name] = a
    return out


class CalibrationData:
    """A re-iterable stream of feeds with an optional full pre-check.

    ``factory(specs)`` returns a fresh iterator of ``(where, feed)`` pairs; ``precheck(specs)``
    (file sources) validates everything without running a model. ``length`` is the number
    of feeds when known (for progress bars)."""

    def __init__(
        self,
        factory: Callable[[Sequence[InputSpec]], Iterator[tuple[str, Mapping[str, Any]]]],
        *,
        description: str,
        length: int | None = None,
        precheck: Callable[[Sequence[InputSpec]], None] | None = None,
        reiterable: bool = True,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> None:
        self._factory = factory
        self.description = description
        self.length = length
        self._precheck = precheck
        self.reiterable = reiterable
        self._progress = progress
        self._used = False

    def with_progress(self, callback: Callable[[int, int | None], None]) -> "CalibrationData":
        """The same data; ``callback(done, total)`` is called after each feed is read."""
        return CalibrationData(
            self._factory,
            description=self.description,
            length=self.length,
            precheck=self._precheck,
            reiterable=self.reiterable,
            progress=callback,
        )

    def precheck(self, specs: Sequence[InputSpec]) -> None:
        if self._precheck is not None:
            self._precheck(specs)

    def feeds(self, specs: Sequence[InputSpec], *, limit: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Validated, normalized feeds (at most ``limit`` when > 0)."""
        if self._used and not self.reiterable:
            raise CalibrationDataError(
                f"{self.description} was already consumed; pass a list or a function returning a fresh iterator"
            )
        self._used = True
        n = 0
        total = self.length if not limit else min(limit, self.length or limit)
        for where, feed in self._factory(specs):
            if limit and n >= limit:
                break
            yield check_feed(feed, specs, where)
            n += 1
            if self._progress is not None:
                self._progress(n, total)
        if n == 0:
            hint = " (the function must return a fresh iterator on every call)" if "factory" in self.description else ""
            raise CalibrationDataError(f"{self.description} holds no samples{hint}")

    def __repr__(self) -> str:
        return f"CalibrationData({self.description}, length={self.length})"


# -- .npz stacked ----------------------------------------------------------------------------


def _npz_array(z, key: str, where: str) -> np.ndarray:
    try:
        return z[key]
    except ValueError as e:  # object (pickled) arrays: allow_pickle stays off
        raise CalibrationDataError(f"{where}: array {key!r} cannot be read ({str(e)[:100]}); save numeric "
                                   "arrays (np.savez with plain ndarrays)") from None


def from_npz(path: str | os.PathLike, *, batch_size: int = 1) -> CalibrationData:
    """A stacked ``.npz``: see the module docstring for how ranks are read."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
    except Exception as e:
        raise CalibrationDataError(f"cannot read {path} as an .npz file ({type(e).__name__}: {str(e)[:120]})") from None
    if not keys:
        raise CalibrationDataError(f"{path} holds no arrays")
    where0 = str(path)

    def layout(specs: Sequence[InputSpec], z) -> tuple[dict[str, bool], int]:
        """Per key: True when one sample per index (rank + 1); and the number of samples."""
        by_name = {s.name: s for s in specs}
        unknown = sorted(set(keys) - set(by_name))
        if unknown:
            raise CalibrationDataError(
                f"{where0}: unknown input name(s) {', '.join(map(repr, unknown))}; the model's inputs are "
                + ", ".join(s.describe() for s in specs)
            )
        missing = sorted(set(by_name) - set(keys))
        if missing:
            raise CalibrationDataError(f"{where0}: missing input(s) {', '.join(map(repr, missing))}")
        per_index, counts = {}, {}
        for k in keys:
            a = _npz_array(z, k, where0)
            rank = by_name[k].rank
            if rank is None:
                per_index[k] = False
            elif a.ndim == rank + 1:
                per_index[k] = True
            elif a.ndim == rank and rank >= 1:
                per_index[k] = False
            else:
                raise CalibrationDataError(
                    f"{where0}: array {k!r} has shape {a.shape}; for input {by_name[k].describe()} it must have "
                    + (f"rank {rank} (batched along axis 0) or {rank + 1} (one sample per index)" if rank else
                       "rank 1, one value per sample (a .npz holds samples along its first axis)")
                )
            counts[k] = a.shape[0]
        if len(set(counts.values())) > 1:
            raise CalibrationDataError(
                f"{where0}: arrays disagree on the number of samples (first axis): "
                + ", ".join(f"{k}: {n}" for k, n in counts.items())
            )
        return per_index, next(iter(counts.values()))

    def precheck(specs: Sequence[InputSpec]) -> None:
        with np.load(path, allow_pickle=False) as z:
            per_index, n = layout(specs, z)
            if n == 0:
                raise CalibrationDataError(f"{where0} holds no samples (first axis has length 0)")
            for k in keys:  # whole-array checks: dtype and NaN once, not per feed
                spec = next(s for s in specs if s.name == k)
                a = _saved_bfloat16(_npz_array(z, k, where0), spec)
                if spec.dtype is not None and a.dtype != spec.dtype:
                    raise CalibrationDataError(
                        f"{where0}: array {k!r} is {a.dtype} but the model expects {spec.dtype}"
                    )
                if _is_float(a) and not np.all(np.isfinite(a)):
                    bad = int(np.argmax(~np.isfinite(a).reshape(a.shape[0], -1).all(axis=1)))
                    raise CalibrationDataError(f"{where0}: array {k!r} contains NaN or Inf (sample {bad})")

    def factory(specs: Sequence[InputSpec]) -> Iterator[tuple[str, dict]]:
        with np.load(path, allow_pickle=False) as z:
            per_index, n = layout(specs, z)
            arrays = {k: z[k] for k in keys}
        step = batch_size if not any(per_index.values()) else 1
        for i in range(0, n, step):
            feed = {k: (a[i] if per_index[k] else a[i : i + step]) for k, a in arrays.items()}
            yield f"{where0} sample {i}", feed

    return CalibrationData(factory, description=f"calibration data {path}", precheck=precheck, length=None)


# -- folder of .npy / .npz --------------------------------------------------------------------


def _files_in(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _read_sample(p: Path, specs: Sequence[InputSpec], mmap: bool) -> dict[str, np.ndarray]:
    try:
        if p.suffix.lower() == ".npy":
            if len(specs) != 1:
                raise CalibrationDataError(
                    f"{p}: a .npy file feeds a single-input model, but this model has inputs "
                    + ", ".join(s.name for s in specs)
                    + "; use .npz files keyed by input name"
                )
            return {specs[0].name: np.load(p, allow_pickle=False, mmap_mode="r" if mmap else None)}
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except CalibrationDataError:
        raise
    except Exception as e:
        raise CalibrationDataError(f"cannot read {p} ({type(e).__name__}: {str(e)[:120]})") from None


def from_folder(folder: str | os.PathLike) -> CalibrationData:
    """Every ``.npy``/``.npz`` under ``folder`` (recursively, sorted), one sample each."""
    folder = Path(folder)
    files = _files_in(folder, (".npy", ".npz"))
    if not files:
        raise CalibrationDataError(f"{folder} holds no .npy or .npz files")
    def precheck(specs: Sequence[InputSpec]) -> None:
        for p in files:
            check_feed(_read_sample(p, specs, mmap=True), specs, str(p))

    def factory(specs: Sequence[InputSpec]) -> Iterator[tuple[str, dict]]:
        for p in files:
            yield str(p), _read_sample(p, specs, mmap=False)

    return CalibrationData(factory, description=f"calibration folder {folder}", length=len(files), precheck=precheck)


# -- Python iterables ------------------------------------------------------------------------


def from_iterable(source: Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]]) -> CalibrationData:
    """A list/tuple (re-iterable), a zero-argument factory (re-iterable), or any other
    iterable (one pass only)."""
    if callable(source) and not hasattr(source, "__iter__"):
        factory_fn = source

        def factory(specs: Sequence[InputSpec]) -> Iterator[tuple[str, Mapping]]:
            for i, feed in enumerate(factory_fn()):
                yield f"sample {i}", feed

        return CalibrationData(factory, description="calibration data (factory)")
    if isinstance(source, Mapping):
        raise CalibrationDataError(
            "calibration data is a single dict; pass a list of dicts, one per sample (or a path to an .npz)"
        )
    reiterable = isinstance(source, (list, tuple)) or (hasattr(source, "__iter__") and iter(source) is not source)
    length = len(source) if isinstance(source, (list, tuple)) else None

    def factory(specs: Sequence[InputSpec]) -> Iterator[tuple[str, Mapping]]:
        for i, feed in enumerate(source):
            yield f"sample {i}", feed

    return CalibrationData(factory, description="calibration data (iterable)", length=length, reiterable=reiterable)


def as_calibration_data(source: Any, *, batch_size: int = 1) -> CalibrationData:
    """Turn whatever the user passed into :class:`CalibrationData`."""
    if source is None:
        raise CalibrationDataError(
            "int8-static needs calibration data: pass data=... (an .npz, a folder of .npy/.npz, or an "
            "iterable of {input_name: array}); on the command line --calib-data or --calib-images"
        )
    if isinstance(source, CalibrationData):
        return source
    if hasattr(source, "as_calibration_data"):  # calib_text.TextCalibration: token windows
        return source.as_calibration_data()
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            return from_folder(p)
        if p.is_file():
            if p.suffix.lower() == ".npz":
                return from_npz(p, batch_size=batch_size)
            if p.suffix.lower() == ".npy":
                return _single_npy(p)
            raise CalibrationDataError(f"{p}: calibration data must be an .npz file or a folder of .npy/.npz files")
        raise CalibrationDataError(f"calibration data {p} does not exist")
    if isinstance(source, np.ndarray):
        raise CalibrationDataError("calibration data is a bare array; pass {input_name: array} samples or an .npz path")
    if isinstance(source, Iterable) or callable(source):
        return from_iterable(source)
    raise CalibrationDataError(f"cannot use {type(source).__name__} as calibration data")


def _single_npy(p: Path) -> CalibrationData:
    """A lone ``.npy``: stacked samples of a single-input model (rank rules as in .npz)."""

    def precheck(specs: Sequence[InputSpec]) -> None:
        if len(specs) != 1:
            raise CalibrationDataError(f"{p}: a .npy file feeds a single-input model; use an .npz keyed by input name")

    def factory(specs: Sequence[InputSpec]):
        precheck(specs)
        spec = specs[0]
        try:
            a = np.load(p, allow_pickle=False, mmap_mode="r")
        except Exception as e:
            raise CalibrationDataError(f"cannot read {p} as a .npy file ({type(e).__name__}: {str(e)[:120]})") from None
        if spec.rank is not None and a.ndim == spec.rank + 1:
            for i in range(a.shape[0]):
                yield f"{p} sample {i}", {spec.name: np.asarray(a[i])}
        else:
            for i in range(a.shape[0]):
                yield f"{p} sample {i}", {spec.name: np.asarray(a[i : i + 1])}

    return CalibrationData(factory, description=f"calibration data {p}", precheck=precheck)


# -- batching ---------------------------------------------------------------------------------


def batched(
    feeds: Iterable[dict[str, np.ndarray]], specs: Sequence[InputSpec], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Concatenate consecutive feeds along axis 0 up to ``batch_size`` rows where every input
    has a symbolic first dimension and the other dimensions agree; otherwise pass through."""
    if batch_size <= 1 or not all(s.shape and s.shape[0] is None for s in specs):
        yield from feeds
        return
    pending: list[dict[str, np.ndarray]] = []
    rows = 0

    def key(feed):
        return tuple((k, feed[k].shape[1:]) for k in sorted(feed))

    for feed in feeds:
        if pending and key(feed) != key(pending[0]):
            yield _concat(pending)
            pending, rows = [], 0
        pending.append(feed)
        rows += next(iter(feed.values())).shape[0]
        if rows >= batch_size:
            yield _concat(pending)
            pending, rows = [], 0
    if pending:
        yield _concat(pending)


def _concat(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(feeds) == 1:
        return feeds[0]
    return {k: np.concatenate([f[k] for f in feeds], axis=0) for k in feeds[0]}


def take(it: Iterable, n: int) -> list:
    return list(itertools.islice(it, n))


def open_calibration_source(
    calib_data: str | None, calib_images: str | None, preprocess: Sequence[str] = ()
) -> CalibrationData:
    """The command line's ``--calib-data`` / ``--calib-images`` + ``--preprocess``."""
    if calib_data and calib_images:
        raise CalibrationDataError("give either --calib-data or --calib-images, not both")
    if preprocess and not calib_images:
        raise CalibrationDataError("--preprocess applies to --calib-images")
    if calib_images:
        from onnxq.preprocess import from_images, parse_preprocess

        return from_images(calib_images, parse_preprocess(list(preprocess) or None))
    if calib_data:
        return as_calibration_data(calib_data)
    raise CalibrationDataError("int8-static needs --calib-data or --calib-images")
