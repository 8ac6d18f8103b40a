"""Run recipes over many small models and sort what happens into outcome classes.

Used by ``bench/sweep_onnx_node_tests.py`` (every node test case the installed ``onnx``
package generates) and by a CI-sized sample in the tests. An outcome is one of:

- ``quantized``: the output passes the full checker, loads in ORT and matches the float
  model's outputs within the recipe's bound;
- ``nothing-to-quantize`` / ``refused``: a clean onnxq error with a specific message;
- ``float-model-unrunnable``: ORT cannot run the original model either (not our concern);
- ``mismatch``: quantized, but outputs out of bound (a bug);
- ``crash``: any other exception (a bug).
"""

from __future__ import annotations

import dataclasses
import tempfile
import traceback
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

__all__ = ["Case", "Outcome", "run_case", "output_bound", "node_test_cases"]

OUTCOMES = ("quantized", "nothing-to-quantize", "refused", "float-model-unrunnable", "mismatch", "crash")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    model_bytes: bytes
    inputs: Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Outcome:
    case: str
    recipe: str
    kind: str
    detail: str = ""
    rel_rms_error: float | None = None


def output_bound(recipe) -> float:
    """Largest relative RMS error (RMS(err) / RMS(ref)) accepted per output."""
    from onnxq.recipes import WeightOnlyInt4

    return 0.35 if isinstance(recipe, WeightOnlyInt4) else 0.15


def _ort_run(model: bytes | str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 4
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def _rel_rms(ref: np.ndarray, got: np.ndarray) -> float:
    ref = np.asarray(ref)
    if ref.dtype.kind not in "fc":
        return 0.0 if np.array_equal(ref, got) else float("inf")
    ref64 = ref.astype(np.float64)
    got64 = np.asarray(got).astype(np.float64)
    finite = np.isfinite(ref64)
    if not np.array_equal(finite, np.isfinite(got64)):
        return float("inf")
    diff = got64[finite] - ref64[finite]
    rms_ref = np.sqrt(np.mean(ref64[finite] ** 2)) if finite.any() else 0.0
    rms_err = np.sqrt(np.mean(diff**2)) if finite.any() else 0.0
    if rms_ref == 0:
        return 0.0 if rms_err == 0 else float("inf")
    return float(rms_err / rms_ref)


def run_case(case: Case, recipe, *, calibrate: bool) -> Outcome:
    """Quantize one model with one recipe and classify the result."""
    import onnx_ir as ir
    import onnx

    import onnxq
    from onnxq.errors import NothingToQuantizeError, OnnxqError
    from onnxq.verify import check_model_file

    label = recipe.name
    try:
        reference = _ort_run(case.model_bytes, case.inputs)
    except Exception as e:  # ORT cannot run the float model: nothing for us to judge
        return Outcome(case.name, label, "float-model-unrunnable", str(e).splitlines()[0][:160])
    try:
        model = ir.serde.deserialize_model(onnx.load_from_string(case.model_bytes))
        data = [dict(case.inputs)] if calibrate else None
        qmodel = onnxq.quantize(model, recipe, data=data)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "q.onnx"
            onnxq.save(qmodel, out)
            check_model_file(out)
            got = _ort_run(str(out), case.inputs)
    except NothingToQuantizeError as e:
        return Outcome(case.name, label, "nothing-to-quantize", str(e))
    except OnnxqError as e:
        return Outcome(case.name, label, "refused", str(e))
    except Exception as e:
        tb = traceback.format_exc(limit=-3).strip().splitlines()
        return Outcome(case.name, label, "crash", f"{type(e).__name__}: {str(e)[:200]} | {' / '.join(tb[-3:])}")
    worst = max((_rel_rms(r, g) for r, g in zip(reference, got)), default=0.0)
    if worst > output_bound(recipe):
        return Outcome(case.name, label, "mismatch", f"relative RMS error {worst:.3g}", worst)
    return Outcome(case.name, label, "quantized", "", worst)


def frozen_weights_variant(case: Case) -> Case | None:
    """The same case with every input after the first turned into an initializer holding
    its test value: node tests feed weights as inputs, and quantization needs constants."""
    import onnx

    model = onnx.load_from_string(case.model_bytes)
    inputs = list(model.graph.input)
    if len(inputs) < 2:
        return None
    keep, freeze = inputs[:1], inputs[1:]
    for value_info in freeze:
        model.graph.initializer.append(onnx.numpy_helper.from_array(case.inputs[value_info.name], value_info.name))
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return Case(case.name + "[frozen]", model.SerializeToString(), {keep[0].name: case.inputs[keep[0].name]})


def node_test_cases(pattern: str | None = None) -> Iterable[Case]:
    """The node test cases of the installed ``onnx`` package (generated in memory: recent
    wheels ship the generators, not the data files), each with its first data set."""
    import re
    import warnings

    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    for tc in cases:
        if pattern and not re.search(pattern, tc.name):
            continue
        if tc.model is None or not tc.data_sets:
            continue
        inputs, _outputs = tc.data_sets[0]
        names = [i.name for i in tc.model.graph.input]
        if len(inputs) != len(names) or any(not isinstance(x, np.ndarray) for x in inputs):
            continue  # sequence/optional inputs: not tensors we can feed
        yield Case(tc.name, tc.model.SerializeToString(), dict(zip(names, inputs)))
