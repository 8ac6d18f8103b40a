"""How far a quantized model is from its float original, per output and per layer.

Streams samples through both models; per tensor it keeps only running sums (signal and
noise energy, dot products, max error), so memory does not grow with the sample count.
Layers are matched by tensor name: onnxq's passes keep the float tensor names of the
original graph (a QDQ pair hangs off a tensor; a rewritten node's output keeps its name).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from onnxq.deploy.graph import WEIGHTED_OPS
from onnxq.errors import OnnxqError

logger = logging.getLogger(__name__)

__all__ = [
    "TensorError",
    "Comparison",
    "ErrorAccumulator",
    "compare_models",
    "shared_float_tensors",
    "record_channel_scales",
    "CHANNEL_SCALES_KEY",
]

# model metadata: tensors a quantizer rescaled per channel (axis 1) on purpose, e.g. by
# channel equalization. JSON list of {"tensors": [names], "scale": base64 float32 factors};
# compare divides them out.
CHANNEL_SCALES_KEY = "onnxq.channel_scales"


def record_channel_scales(model, scales: Mapping[str, np.ndarray]) -> None:
    """Note in ``model``'s metadata that these tensors are ``factor * float tensor``
    (tensors sharing one factor array are stored once)."""
    import base64
    import json

    entries = json.loads(model.metadata_props.get(CHANNEL_SCALES_KEY, "[]"))
    by_array: dict[int, list[str]] = {}
    arrays: dict[int, np.ndarray] = {}
    for name, factor in scales.items():
        by_array.setdefault(id(factor), []).append(name)
        arrays[id(factor)] = np.asarray(factor, dtype="<f4").ravel()
    for key, names in by_array.items():
        entries.append({"tensors": sorted(names), "scale": base64.b64encode(arrays[key].tobytes()).decode("ascii")})
    model.metadata_props[CHANNEL_SCALES_KEY] = json.dumps(entries)


def _channel_scales(model) -> dict[str, np.ndarray]:
    import base64
    import json

    out = {}
    for entry in json.loads(model.metadata_props.get(CHANNEL_SCALES_KEY, "[]")):
        factor = np.frombuffer(base64.b64decode(entry["scale"]), dtype="<f4").astype(np.float64)
        for name in entry["tensors"]:
            out[name] = factor
    return out


@dataclasses.dataclass(frozen=True)
class TensorError:
    name: str
    sqnr_db: float
    cosine: float
    max_abs_error: float
    top1_agreement: float | None = None
    op_type: str = ""
    node: str = ""  # the float model's node that produces the tensor
    added_nsr: float = 0.0  # noise-to-signal this node adds: NSR(out) - max NSR(inputs)
    # SQNR this node loses (dB): min SQNR of its inputs (capped at INPUT_SQNR_DB; graph
    # inputs count as that) minus its output's SQNR. Ranks worst layers: a ratio, so a
    # late layer is not blamed for noise that its inputs already carried and that it
    # merely scales up along with its (smaller) signal
    added_db: float = 0.0
    # per sample (one update per sample): the median of the samples' own SQNRs, and the
    # sample holding the largest share of the float tensor's energy (index, share). One
    # sample 1000x larger than the rest makes the pooled SQNR its SQNR alone
    median_sample_sqnr_db: float | None = None
    dominant_sample: int | None = None
    dominant_share: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dominated(self, samples: int) -> bool:
        """Whether one of ``samples`` (>= 4) holds most of the float tensor's energy."""
        return samples >= 4 and self.dominant_sample is not None and self.dominant_share >= DOMINANT_SHARE


# a sample holding at least this share of an output's energy dominates its pooled SQNR
DOMINANT_SHARE = 0.5


class ErrorAccumulator:
    """Running error statistics of ``got`` against ``ref`` over many samples."""

    def __init__(self, name: str, op_type: str = "", node: str = "") -> None:
        self.name = name
        self.op_type = op_type
        self.node = node
        self.signal = 0.0
        self.noise = 0.0
        self.dot = 0.0
        self.got_energy = 0.0
        self.max_abs = 0.0
        self.top1_same = 0
        self.top1_total = 0
        self.sample_signal: list[float] = []
        self.sample_noise: list[float] = []

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        ref64 = np.asarray(ref, dtype=np.float64)
        got64 = np.asarray(got, dtype=np.float64)
        if ref64.shape != got64.shape:
            raise ValueError(f"tensor {self.name}: float shape {ref64.shape} != quantized shape {got64.shape}")
        if ref64.ndim == 2 and ref64.shape[-1] >= 2:  # classifier-shaped [N, classes]
            self.top1_same += int(np.sum(ref64.argmax(-1) == got64.argmax(-1)))
            self.top1_total += ref64.shape[0]
        finite = np.isfinite(ref64)
        if not finite.all():  # -inf/inf/NaN in the float model itself (Log(0), masks): not an error measure
            ref64, got64 = ref64[finite], got64[finite]
        diff = got64 - ref64
        signal, noise = float(np.sum(ref64 * ref64)), float(np.sum(diff * diff))
        self.sample_signal.append(signal)
        self.sample_noise.append(noise)
        self.signal += signal
        self.noise += noise
        self.dot += float(np.sum(ref64 * got64))
        self.got_energy += float(np.sum(got64 * got64))
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))

    def result(self) -> TensorError:
        broken = not (math.isfinite(self.noise) and math.isfinite(self.got_energy))  # Inf/NaN where the float is finite
        if broken:
            sqnr = -math.inf
        elif self.noise == 0:
            sqnr = math.inf
        elif self.signal == 0:
            sqnr = -math.inf
        else:
            sqnr = 10 * math.log10(self.signal / self.noise)
        denom = math.sqrt(self.signal * self.got_energy) if not broken else 0.0
        cosine = self.dot / denom if denom else (1.0 if self.noise == 0 else 0.0)
        top1 = self.top1_same / self.top1_total if self.top1_total else None
        median, dominant, share = None, None, 0.0
        if len(self.sample_signal) > 1 and not broken and self.signal > 0:
            sig, noi = np.array(self.sample_signal), np.array(self.sample_noise)
            kept = sig > 0
            if kept.any():
                with np.errstate(divide="ignore"):
                    median = float(np.median(10 * np.log10(sig[kept] / noi[kept])))
            dominant = int(sig.argmax())
            share = float(sig[dominant] / self.signal)
        return TensorError(self.name, sqnr, cosine, self.max_abs, top1, self.op_type, self.node,
                           median_sample_sqnr_db=median, dominant_sample=dominant, dominant_share=share)


@dataclasses.dataclass(frozen=True)
class Comparison:
    samples: int
    outputs: tuple[TensorError, ...]
    layers: tuple[TensorError, ...]  # in the float graph's order

    def worst_layers(self, n: int = 5) -> list[TensorError]:
        """The layers that lose the most SQNR between their inputs and their output (not
        merely the lowest SQNR, which mostly reflects what upstream layers did)."""
        return sorted(self.layers, key=lambda t: t.added_db, reverse=True)[:n]

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "outputs": [o.to_dict() for o in self.outputs],
            "layers": [layer.to_dict() for layer in self.layers],
            "worst_layers": [layer.name for layer in self.worst_layers()],
        }


def nsr(sqnr_db: float) -> float:
    """Noise-to-signal power ratio from an SQNR in dB."""
    if math.isinf(sqnr_db):
        return 0.0 if sqnr_db > 0 else math.inf
    return 10 ** (-sqnr_db / 10)


# SQNR credited to tensors compare does not measure (graph inputs, constants): far above
# what 8-bit quantization of a layer keeps (~40-50 dB), so the first quantized layers are
# charged with the error they add, without an infinite drop ranking them first always
INPUT_SQNR_DB = 60.0


def _measured_inputs(name: str, inputs_of: Mapping[str, list[str]], measured: Mapping[str, float],
                     producers: Mapping[str, tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The measured tensors ``name`` is computed from, looking through tensors the quantized
    model does not have under the float name (a MatMul result that a folded bias changed, a
    BatchNormalization folded into its Conv), and the nodes that compute those unmeasured
    ones (they are part of this layer's step)."""
    found, absorbed, queue, seen = [], [], collections.deque(inputs_of.get(name, ())), set()
    while queue:  # breadth first: ``absorbed`` runs from the nearest node back
        i = queue.popleft()
        if i in seen:
            continue
        seen.add(i)
        if i in measured:
            found.append(i)
        elif i in inputs_of and i in producers:  # computed, but not comparable: part of this step
            absorbed.append(i)
            queue.extend(inputs_of[i])
    return found, absorbed


def _with_added_noise(layers: list[TensorError], inputs_of: Mapping[str, list[str]],
                      producers: Mapping[str, tuple[str, str]] | None = None) -> list[TensorError]:
    by_name = {t.name: nsr(t.sqnr_db) for t in layers}
    db = {t.name: min(t.sqnr_db, INPUT_SQNR_DB) for t in layers}
    producers = producers or {}
    out = []
    for t in layers:
        inputs, absorbed = _measured_inputs(t.name, inputs_of, by_name, producers)
        upstream = max((by_name.get(i, 0.0) for i in inputs), default=0.0)
        upstream_db = min((db.get(i, INPUT_SQNR_DB) for i in inputs), default=INPUT_SQNR_DB)
        changes = {}
        # the nearest Conv/MatMul in the absorbed part is what --exclude should name (not the Add after it)
        weighted = [producers[a] for a in absorbed if producers[a][0] in WEIGHTED_OPS]
        if t.op_type not in WEIGHTED_OPS and weighted:
            changes = {"op_type": weighted[0][0], "node": weighted[0][1]}
        out.append(dataclasses.replace(t, added_nsr=by_name[t.name] - upstream, added_db=upstream_db - db[t.name],
                                       **changes))
    return out


def shared_float_tensors(float_model, quant_model) -> list[tuple[str, str, str]]:
    """(name, producing op type, producing node name) of float tensors computed by nodes in both models, in the
    float model's order; graph inputs, initializers and outputs are left out."""
    import onnx_ir as ir

    def produced(model) -> dict[str, ir.Value]:
        out = {}
        for node in model.graph:
            for v in node.outputs:
                if v.name:
                    out[v.name] = v
        return out

    float_values = produced(float_model)
    quant_values = produced(quant_model)
    float_names = {n.name for n in float_model.graph if n.name}
    outputs = {v.name for v in float_model.graph.outputs}
    shared = []
    for name, v in float_values.items():
        if name in outputs or name not in quant_values:
            continue
        producer = v.producer()
        if producer is None or producer.op_type in ("Constant", "Shape", "QuantizeLinear", "DequantizeLinear"):
            continue
        q = quant_values[name]
        if v.dtype != ir.DataType.FLOAT or q.dtype not in (None, ir.DataType.FLOAT):
            continue
        # the quantized model's producer where it computes the tensor itself: a BatchNormalization
        # folded into its Conv keeps its output name, and the node to --exclude is the Conv. Not a
        # node the quantizer made (int8-dynamic's "emb/Mul" after a Gather): --exclude takes the
        # float model's names
        made = q.producer()
        if (made is not None and made.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant", "Identity")
                and (made.name in float_names or not made.name)):
            producer = made
        shared.append((name, producer.op_type, producer.name or ""))
    return shared


def _instrumented(model, names: list[str], path: Path) -> bytes | str:
    """``model`` with ``names`` added as graph outputs: serialized, or for a model with external
    data (whose relative paths mean nothing to a session built from bytes) saved at ``path``
    with its weights beside it."""
    import onnx
    import onnx_ir as ir

    from onnxq import modelio

    if modelio.has_external_data(model):
        existing = {o.name for o in model.graph.outputs}
        values = {v.name: v for n in model.graph for v in n.outputs}
        model.graph.outputs.extend(values[n] for n in names if n not in existing and n in values)
        ir.save(model, path, external_data=path.name + ".data")
        return str(path)
    clone = ir.serde.serialize_model(model)
    existing = {o.name for o in clone.graph.output}
    dtypes = {v.name: v.dtype for n in model.graph for v in n.outputs if v.name in names}
    for name in names:
        if name not in existing:
            dtype = dtypes.get(name)
            elem = dtype.value if dtype is not None else onnx.TensorProto.FLOAT
            clone.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return clone.SerializeToString()


def compare_models(
    float_path: str | Path,
    quant_path: str | Path,
    data: Iterable[Mapping[str, np.ndarray]],
    *,
    per_layer: bool = True,
    max_samples: int | None = None,
    session_factory: Callable[[str | bytes], object] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Comparison:
    """Run both models on ``data`` and measure the quantized model's error.

    ``session_factory(path_or_bytes)`` builds an ORT session (default: CPU, with the onnxq
    custom-op library when the quantized model needs it)."""
    import onnx_ir as ir

    from onnxq import modelio
    from onnxq.data import float32_interface, ort_feed

    if session_factory is None:
        session_factory = _default_session
    from onnxq.passes.infer_shapes import InferShapesPass

    float_model = modelio.load(float_path)
    quant_model = modelio.load(quant_path)
    # types of intermediate tensors pick what is comparable; without ONNX's data propagation,
    # whose partial shape values around custom ops made ORT refuse a valid Reshape in the
    # instrumented model (int4 --format onnxq)
    InferShapesPass(data_prop=False)(float_model)
    InferShapesPass(data_prop=False)(quant_model)
    output_names = [v.name for v in float_model.graph.outputs]
    quant_outputs = [v.name for v in quant_model.graph.outputs]
    if output_names != quant_outputs:
        raise OnnxqError(f"the models' outputs differ: {output_names} vs {quant_outputs}; compare a float model "
                         "with its own quantized version")
    conditions: dict[str, bool] = {}  # If condition tensor -> the branch the first sample takes
    if per_layer and any(n.op_type == "If" for n in float_model.graph):
        data = iter(data)
        first = next(data, None)
        if first is not None:
            data = itertools.chain([first], data)
            conditions = _inline_taken_branches(float_model, quant_model, ort_feed(first), session_factory)
    layers = shared_float_tensors(float_model, quant_model) if per_layer else []
    rescaled = _channel_scales(quant_model)
    layer_names = [n for n, _, _ in layers]
    bfloat16_io = any(v.dtype == ir.DataType.BFLOAT16 for m in (float_model, quant_model)
                      for v in [*m.graph.inputs, *m.graph.outputs])
    if bfloat16_io:  # ORT's Python API neither takes nor returns bfloat16: both run with float32 ends
        float32_interface(float_model, outputs=True)
        float32_interface(quant_model, outputs=True)

    input_names = [v.name for v in float_model.graph.inputs]
    checked = [c for c in conditions if c not in input_names]

    def instrumented_sessions(names: list[str]):
        with tempfile.TemporaryDirectory(prefix="onnxq-compare-") as tmp:
            return (session_factory(_instrumented(float_model, names + checked, Path(tmp) / "float.onnx")),
                    session_factory(_instrumented(quant_model, names, Path(tmp) / "quant.onnx")))

    sessions = None
    if layer_names:
        try:
            sessions = instrumented_sessions(layer_names)
        except Exception as e:  # ORT's optimizer, with inner tensors exposed, can trip on a valid model
            logger.warning(
                "per-layer comparison skipped: ONNX Runtime cannot build the models with their layer outputs "
                "exposed (%s); comparing the outputs only", str(e).splitlines()[0][:200],
            )
            layers, layer_names = [], []
    if sessions is None:
        if bfloat16_io:
            sessions = instrumented_sessions([])
        else:  # the files as they are: their If nodes pick the branch for every sample
            sessions = session_factory(str(float_path)), session_factory(str(quant_path))
            conditions = {}
    f_sess, q_sess = sessions
    inputs_of = {
        v.name: [i.name for i in node.inputs if i is not None and i.name]
        for node in float_model.graph
        for v in node.outputs
        if v.name
    }
    producers = {v.name: (node.op_type, node.name or "") for node in float_model.graph for v in node.outputs
                 if v.name and node.op_type != "Constant"}
    del float_model, quant_model
    fetch = output_names + layer_names
    graph_inputs = set(input_names)
    f_fetch = fetch + [c for c in conditions if c not in fetch and c not in graph_inputs]
    out_acc = {n: ErrorAccumulator(n) for n in output_names}
    layer_acc = {n: ErrorAccumulator(n, op, node) for n, op, node in layers}
    samples = other_branch = 0
    as_files = None  # sessions of the files as they are, for samples that take another branch
    for feeds in data:
        if max_samples is not None and samples >= max_samples:
            break
        feeds = ort_feed(feeds)
        other = any(bool(np.asarray(feeds[c]).reshape(-1)[0]) != taken for c, taken in conditions.items()
                    if c in graph_inputs)
        ref = None
        if not other:
            try:
                ref = dict(zip(f_fetch, f_sess.run(f_fetch, feeds)))
            except Exception:
                if not conditions:
                    raise
                other = True  # the inlined branch cannot run on a sample meant for the other one
        if ref is not None and any(bool(np.asarray(ref[c]).reshape(-1)[0]) != taken
                                   for c, taken in conditions.items() if c not in graph_inputs):
            other = True
        if other:
            # the other branch than the inlined one: the original files give its outputs (no layers)
            if as_files is None:
                as_files = session_factory(str(float_path)), session_factory(str(quant_path))
            for n, r, g in zip(output_names, as_files[0].run(output_names, feeds), as_files[1].run(output_names, feeds)):
                out_acc[n].update(r, g)
            other_branch += 1
            samples += 1
            continue
        got = dict(zip(fetch, q_sess.run(fetch, feeds)))
        for n in output_names:
            out_acc[n].update(ref[n], got[n])
        for n in layer_names:
            g = got[n]
            if n in rescaled and g.ndim >= 2 and g.shape[1] == rescaled[n].size:
                g = g / rescaled[n].reshape((1, -1) + (1,) * (g.ndim - 2))
            layer_acc[n].update(ref[n], g)
        samples += 1
        if progress is not None:
            progress(samples)
    if samples == 0:
        raise OnnxqError("no samples to compare: the data was empty (or --max-samples 0)")
    if other_branch:
        logger.warning("%d of %d samples took another If branch than the first: they count in the outputs' "
                       "error, the per-layer table covers the other %d", other_branch, samples, samples - other_branch)
    return Comparison(
        samples=samples,
        outputs=tuple(a.result() for a in out_acc.values()),
        layers=tuple(_with_added_noise([a.result() for a in layer_acc.values()], inputs_of, producers)),
    )


# ops a tensor passes through unchanged in value or only clipped, on its way to the node it feeds
THROUGH_OPS = ("Relu", "Clip", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def readers_through(model, tensors: Iterable[str], accept: Callable, depth: int = 8) -> dict[str, list[str]]:
    """For each tensor, the names of the nodes of ``model`` (an onnx_ir model, root graph)
    that ``accept`` among its readers, looking through :data:`THROUGH_OPS`: where a float op's
    result gets quantized (the Conv or MatMul it feeds), the node that ``--exclude`` can name."""
    readers: dict[str, list] = collections.defaultdict(list)
    for node in model.graph:
        for v in node.inputs:
            if v is not None and v.name:
                readers[v.name].append(node)

    def find(name: str, depth: int) -> list[str]:
        out = []
        for n in readers.get(name, ()):
            if accept(n):
                out.append(n.name)
            elif depth and n.op_type in THROUGH_OPS:
                for o in n.outputs:
                    out.extend(find(o.name, depth - 1))
        return out

    return {t: list(dict.fromkeys(find(t, depth))) for t in tensors}


def _inline_taken_branches(float_model, quant_model, feed, session_factory) -> dict[str, bool]:
    """Inline, in both models, the branch each top-level If of the float model takes on
    ``feed`` (its condition computed by the float model), so that the layers inside it can be
    matched and measured (silero-vad holds its whole network in an If on the sample rate).
    Returns condition tensor -> branch taken; the caller checks that every sample agrees."""
    import onnx

    from onnxq.passes.inline_if_branches import InlineIfBranchesPass

    ifs = [n for n in float_model.graph if n.op_type == "If" and n.domain in ("", "ai.onnx") and n.outputs]
    conds = sorted({n.inputs[0].name for n in ifs if n.inputs[0] is not None and n.inputs[0].name})
    if not conds:
        return {}
    values = {}
    for name in conds:
        if name in feed:
            values[name] = feed[name]
    missing = [c for c in conds if c not in values]
    if missing:
        import onnx_ir as ir

        proto = ir.serde.serialize_model(float_model)
        existing = {o.name for o in proto.graph.output}
        proto.graph.output.extend(onnx.helper.make_tensor_value_info(c, onnx.TensorProto.BOOL, None)
                                  for c in missing if c not in existing)
        try:
            session = session_factory(proto.SerializeToString())
            values.update(zip(missing, session.run(missing, feed)))
        except Exception as e:  # the branches stay; the comparison covers the main graph only
            logger.debug("If conditions not computed: %s", e)
            return {}
    conditions = {c: bool(np.asarray(values[c]).reshape(-1)[0]) for c in conds}
    taken = {n.outputs[0].name: conditions[n.inputs[0].name] for n in ifs if n.inputs[0].name in conditions}
    InlineIfBranchesPass(taken)(float_model)
    InlineIfBranchesPass(taken)(quant_model)
    return conditions


def _default_session(model: str | bytes):
    """ORT CPU session; registers the onnxq custom-op library when the model needs it."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model, load_external_data=False)
    if any(o.domain == "com.onnxq" for o in proto.opset_import):
        from onnxq import runtime

        return runtime.session(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT's warnings (e.g. unused initializers it drops) are not ours to print
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
