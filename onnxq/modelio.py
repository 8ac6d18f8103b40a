"""Load and save models through onnx_ir: lazy external data in, atomic writes out."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxq.errors import ModelLoadError, OnnxqError

__all__ = ["load", "save", "check_output_path", "atomic_write_text", "EXTERNAL_DATA_THRESHOLD_BYTES", "model_weight_bytes"]

logger = logging.getLogger(__name__)

# Protobuf refuses messages of 2 GiB; stay well below it.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000
_HAD_EXTERNAL_DATA = "onnxq.had_external_data"
_SOURCE_BYTES = "onnxq.source_bytes"


def _tensors_of_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors_of_graph(attr.g)
            for g in attr.graphs:
                yield from _tensors_of_graph(g)


def _check_external_data(proto: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations that leave the model's folder or do not exist."""
    base = base_dir.resolve()
    for tensor in _tensors_of_graph(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location or os.path.isabs(location) or Path(location).is_absolute():
            raise ModelLoadError(
                f"tensor {tensor.name!r} points to external data at {location!r}: only paths "
                "relative to the model's folder are allowed"
            )
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise ModelLoadError(
                f"tensor {tensor.name!r} points to external data {location!r} outside the model's "
                f"folder {base}; refusing to read it"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"tensor {tensor.name!r} needs external data file {location!r}, which is missing "
                f"from {base}; copy it beside the model"
            )
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if end > target.stat().st_size:
            raise ModelLoadError(
                f"external data file {location!r} is shorter than tensor {tensor.name!r} needs "
                f"({end} bytes); the file is truncated"
            )


def _densify_sparse_initializers(proto, path: Path) -> None:
    """Root-graph ``sparse_initializer`` entries become dense initializers (onnx_ir keeps no
    sparse tensors: they were dropped, leaving the weight's readers dangling)."""
    from onnx import numpy_helper

    graph = proto.graph
    if not len(graph.sparse_initializer):
        return
    for sparse in graph.sparse_initializer:
        values = numpy_helper.to_array(sparse.values)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        dims = tuple(int(d) for d in sparse.dims)
        dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
        if indices.ndim == 2:  # [NNZ, rank] coordinates
            indices = np.ravel_multi_index(tuple(indices.T), dims)
        try:
            dense[indices] = values
        except (IndexError, ValueError):
            raise ModelLoadError(f"{path}: sparse initializer {sparse.values.name!r} has indices outside its "
                                 f"shape {dims}") from None
        graph.initializer.append(numpy_helper.from_array(dense.reshape(dims), sparse.values.name))
    del graph.sparse_initializer[:]
    logger.info("%s: densified its sparse initializers", path.name)


def load(path: str | os.PathLike) -> ir.Model:
    """Load a model; external tensors stay on disk (memory-mapped on use)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder; give the path of an .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise ModelLoadError(f"{path} is not a readable ONNX model ({type(e).__name__}: {str(e)[:120]})") from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ModelLoadError(f"{path} is not an ONNX model (no graph found); is it the right file?")
    _check_external_data(proto, path.parent)
    size = path.stat().st_size + sum(f.stat().st_size for f in _external_files_of(proto, path.parent))
    _densify_sparse_initializers(proto, path)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx_ir raises several types on malformed graphs
        raise ModelLoadError(f"{path} could not be read as an ONNX graph: {str(e)[:200]}") from None
    from onnx_ir import external_data as _ext

    _ext.set_base_dir(model.graph, str(path.parent))
    if _external_sources(model):
        # remembered for save(): a model that came with external data leaves with it,
        # so writing it never builds the whole protobuf in memory
        model.meta[_HAD_EXTERNAL_DATA] = True
    model.meta[_SOURCE_BYTES] = size
    return model


def model_weight_bytes(model: ir.Model) -> int:
    """Bytes of the model's constant tensors: initializers and the tensors of ``Constant``
    nodes (Paddle2ONNX and some torch exports keep every weight in one), subgraphs too."""
    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
        for node in graph:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                attr = node.attributes.get("value")
                if attr is not None and attr.type == ir.AttributeType.TENSOR:
                    total += attr.value.nbytes
    return total


def _external_sources(model: ir.Model) -> set[Path]:
    """Files the model's lazily loaded tensors still read from."""
    sources = set()
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                sources.add(Path(tensor.path))
    return sources


def keep_external_base(source: ir.Model, copy: ir.Model) -> ir.Model:
    """Point ``copy``'s external tensors (a serialize/deserialize round trip of ``source``
    loses the folder they are relative to) at ``source``'s folder; returns ``copy``."""
    from onnx_ir import external_data as _ext

    for graph in (source.graph, *source.graph.subgraphs()):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                _ext.set_base_dir(copy.graph, value.const_value.base_dir)
                return copy
    return copy


def has_external_data(model: ir.Model) -> bool:
    return bool(_external_sources(model))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _external_files_of(proto: onnx.ModelProto, base_dir: Path) -> set[Path]:
    """The files a model proto keeps its external tensors in."""
    files = set()
    for tensor in _tensors_of_graph(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location:
                files.add(base_dir / location)
    return files


def _external_data_files(model_path: Path) -> list[Path]:
    """The files an ONNX model keeps its external tensors in (none for other files)."""
    if model_path.suffix.lower() != ".onnx" or not model_path.is_file():
        return []
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # not a model: nothing to protect beyond the file itself
        return []
    return sorted(_external_files_of(proto, model_path.parent))


def source_bytes(model: ir.Model) -> int | None:
    """Size on disk of the file a model was loaded from, with its external data files (None
    for a model built in memory)."""
    return model.meta.get(_SOURCE_BYTES)


def check_output_path(path: str | os.PathLike, *, protect: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Raise unless ``path`` (and its ``<name>.data`` sidecar) can be written without touching
    any ``protect`` path or the external data files of a protected model."""
    path = Path(path)
    if len(path.name.encode()) > 200:
        raise OnnxqError(f"output file name is {len(path.name.encode())} bytes long; keep it under 200 (file systems "
                         "allow 255, and onnxq writes through a temporary name next to it)")
    data = path.with_name(path.name + ".data")
    for p in protect:
        p = Path(p)
        if path.resolve() == p.resolve() or _same_file(path, p):
            raise OnnxqError(f"refusing to overwrite the input model {p}; choose another output path with -o")
        if data.exists() and _same_file(data, p):
            raise OnnxqError(f"the output's external data file {data} would overwrite the input {p}")
        # only an existing file can be the input's weights (and reading the input costs a parse)
        for weights in _external_data_files(p) if path.exists() or data.exists() else ():
            for mine in (path, data):
                if mine.resolve() == weights.resolve() or (mine.exists() and _same_file(mine, weights)):
                    raise OnnxqError(
                        f"{mine} is where the input model {p.name} keeps its weights (external data); "
                        "choose another output path with -o"
                    )
    if path.suffix.lower() == ".ort":
        raise OnnxqError(f"{path.name}: the output is an ONNX model, name it .onnx (--target ort-mobile writes the "
                         ".ort file beside it)")
    parent = path.parent
    if not parent.is_dir():
        raise OnnxqError(f"output folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OnnxqError(f"output folder {parent} is not writable; choose another -o")
    if path.is_dir():
        raise OnnxqError(f"output path {path} is a folder; give a file name ending in .onnx")
    return path


def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    protect: tuple[str | os.PathLike, ...] = (),
    external_data: bool | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically (temp folder + rename).

    ``protect``: paths (the input model) that must never be overwritten. ``external_data``:
    None chooses: ``<name>.data`` beside the output when the weights exceed ~1.8 GB or the
    model was loaded from a file with external data (keeping that layout keeps memory flat).
    """
    path = check_output_path(path, protect=protect)
    parent = path.parent
    data_name = path.name + ".data"
    for source in _external_sources(model):
        if (parent / data_name).resolve() == source.resolve():
            raise OnnxqError(
                f"the output's external data file {parent / data_name} is where the input keeps its "
                "weights; choose another output name"
            )
    if external_data is None:
        external_data = bool(model.meta.get(_HAD_EXTERNAL_DATA)) or (
            model_weight_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES
        )
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
    except OSError as e:
        raise OnnxqError(f"cannot write in output folder {parent}: {e.strerror}") from None
    try:
        tmp_model = tmpdir / path.name
        if external_data:
            ir.save(model, tmp_model, external_data=data_name)
        else:
            ir.save(model, tmp_model)
        tmp_data = tmpdir / data_name
        with signals_deferred():  # the model and its data file are replaced together
            if tmp_data.exists():
                os.replace(tmp_data, parent / data_name)
            elif (parent / data_name).is_file():  # a sidecar a former output left; this one reads none
                (parent / data_name).unlink()
            os.replace(tmp_model, path)
    except OSError as e:
        raise OnnxqError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        for leftover in tmpdir.iterdir() if tmpdir.exists() else ():
            leftover.unlink()
        if tmpdir.exists():
            tmpdir.rmdir()
    logger.info("saved %s%s", path, " (+ external data)" if external_data else "")
    return path


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT) or SIGTERM arriving inside the block takes effect when it ends, so that
    files replaced as a pair (a model and its external data) are never left half replaced.
    Only in the main thread (where Python runs signal handlers); elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is None:  # a handler installed outside Python: cannot be put back, leave it
            continue
        try:
            saved[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
        except (ValueError, OSError):  # pragma: no cover - not settable here
            pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):  # handed now to the handlers in place before the block
            handler = saved[sig]
            if callable(handler):
                handler(sig, None)  # Python's own for SIGINT raises KeyboardInterrupt
            elif handler == signal.SIG_DFL:  # SIGTERM's default: end the process
                raise SystemExit(128 + sig)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (a report) through a temp file + rename."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OnnxqError(f"folder {path.parent} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # a report like any other file (mkstemp makes it 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise OnnxqError(f"cannot write {path}: {e.strerror or e}") from None
    return path
