"""Per-runtime verification of a quantized model: does the target runtime load it, which
nodes would fall back to float, how far are its outputs from the float model, how fast is
it against the float model.

- ``ort-cpu``: ONNX Runtime CPU (unfused QDQ groups from the optimized graph);
- ``ort-mobile``: converted to the ``.ort`` format + reduced-ops config, the ``.ort``
  loaded with ORT and compared with the ``.onnx``;
- ``openvino``: OpenVINO CPU plugin, execution precision of every layer;
- ``tensorrt``, ``qnn``: structural checkers enforcing the runtimes' documented QDQ rules
  (those runtimes cannot run here); the output error, when a float model is given, is
  measured with ORT CPU executing the same QDQ graph.

``verify(model, target, data=..., float_model=...)`` returns a :class:`DeployReport`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from onnxq.deploy.graph import QdqView, stores_constant
from onnxq.deploy.report import ERROR, FALLBACK, WARNING, DeployReport, Finding, Rule
from onnxq.targets import DEFAULT_TARGET, TargetProfile, get_target

__all__ = ["verify", "check_structure", "structural_rules", "DeployReport", "Finding", "Rule"]

logger = logging.getLogger(__name__)


def structural_rules(target: str | TargetProfile) -> tuple[Rule, ...]:
    """The documented rules checked on the graph for ``target`` (empty for targets that
    are verified by running them)."""
    name = get_target(target).name
    if name == "tensorrt":
        from onnxq.deploy import tensorrt

        return tensorrt.RULES
    if name == "qnn":
        from onnxq.deploy import qnn

        return qnn.RULES
    return ()


def _profile_findings(view: QdqView, profile: TargetProfile) -> list[Finding]:
    """Checks every target gets from its profile: activation Q/DQ types it does not run."""
    out = []
    for q in view.all_qdq():
        if stores_constant(view, q) or q.qtype == "int32":
            continue
        if q.qtype in ("uint8", "int8", "uint16", "int16") and not profile.allows_activation_type(q.qtype):
            out.append(Finding("PROFILE-TYPE", WARNING, q.name, q.node.op_type,
                               f"{q.qtype} activations: {profile.name} runs {', '.join(profile.activation_types)}"))
    return out


def _with_types(model):
    """A copy of ``model`` with inferred types and shapes (the rules need to know which
    tensors are float and their ranks); the model itself when inference fails."""
    import onnx
    import onnx_ir as ir

    try:
        from onnxq import modelio

        proto = onnx.shape_inference.infer_shapes(ir.serde.serialize_model(model), data_prop=True)
        return modelio.keep_external_base(model, ir.serde.deserialize_model(proto))
    except Exception as e:  # too large for protobuf, unknown ops with bad attributes, ...
        logger.info("shape inference for the structure check failed (%s); using the model as it is", e)
        return model


def check_structure(model, target: str | TargetProfile) -> list[Finding]:
    """Rule findings for an ``onnx_ir.Model`` (or a path) against ``target``'s rules."""
    from onnxq import modelio

    profile = get_target(target)
    if not hasattr(model, "graph"):
        model = modelio.load(model)
    view = QdqView(_with_types(model))
    rules = structural_rules(profile)
    findings = [f for r in rules for f in r.check(view)]
    if not rules:
        findings.extend(_profile_findings(view, profile))
    return findings


def verify(
    model: str | os.PathLike,
    target: str | TargetProfile = DEFAULT_TARGET,
    *,
    data: Any = None,
    float_model: str | os.PathLike | None = None,
    max_samples: int = 16,
    threads: int = 1,
    latency: bool = True,
    preprocess: str | None = None,
    workdir: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> DeployReport:
    """Verify ``model`` (an .onnx path) for ``target``. ``data``: inputs (an .npz, a folder
    of .npy/.npz or of images, or an iterable of feeds; random inputs when None);
    ``float_model``: the float original, for the output error and the speed ratio;
    ``workdir``: where the ORT-mobile conversion writes the ``.ort`` file (a temporary
    folder when None)."""
    from onnxq import modelio
    from onnxq.deploy.common import input_feeds, require_file

    profile = get_target(target)
    path = require_file(model)
    float_path = require_file(float_model, "float model") if float_model is not None else None
    ir_model = modelio.load(path)  # one-line errors for unreadable input
    report = DeployReport(target=profile.name, runtime=profile.runtime, model=str(path))
    say = progress or (lambda msg: logger.info(msg))
    say(f"structure check for {profile.name}")
    report.findings.extend(check_structure(ir_model, profile))
    feeds, where = input_feeds(ir_model, data, max_samples=max_samples, preprocess=preprocess)
    report.notes.append(f"inputs: {where}")
    if float_path is not None:
        from onnxq.data import input_specs
        from onnxq.errors import OnnxqError

        f_names = sorted(s.name for s in input_specs(modelio.load(float_path)))
        q_names = sorted(s.name for s in input_specs(ir_model))
        if f_names != q_names:
            raise OnnxqError(f"the float model's inputs {f_names} differ from the model's {q_names}")
    del ir_model
    name = profile.name
    say(f"running {profile.runtime}" if profile.verification == "runtime" else "emulating with ORT CPU")
    if name == "ort-cpu":
        from onnxq.deploy.ort_cpu import verify_ort_cpu

        verify_ort_cpu(path, profile, report, feeds, float_path, threads=threads, latency=latency)
    elif name == "ort-mobile":
        from onnxq.deploy.ort_mobile import verify_ort_mobile

        if workdir is None:
            with tempfile.TemporaryDirectory(prefix="onnxq-ort-mobile-") as tmp:
                verify_ort_mobile(path, profile, report, feeds, float_path, workdir=Path(tmp), threads=threads,
                                  latency=latency)
                report.notes.append("the .ort file went to a temporary folder; keep it with --keep DIR (workdir= in Python)")
        else:
            verify_ort_mobile(path, profile, report, feeds, float_path, workdir=Path(workdir), threads=threads,
                              latency=latency)
    elif name == "openvino":
        from onnxq.deploy.openvino import verify_openvino

        verify_openvino(path, report, feeds, float_path, threads=threads, latency=latency)
    else:  # structural targets: the rules decide; ORT CPU emulates the QDQ arithmetic
        report.loaded = not any(f.severity == ERROR for f in report.findings)
        report.structural = True
        report.notes.append(f"{profile.runtime} cannot run here: checked against its documented QDQ rules")
        if float_path is None:  # nothing runs: what the inputs were is beside the point
            report.notes = [n for n in report.notes if not n.startswith("inputs: ")]
        else:
            from onnxq.deploy.common import compare_runners, ort_runner
            from onnxq.deploy.ort_cpu import quiet_session_options

            try:
                run, sess = ort_runner(path, threads=threads, options=quiet_session_options(None, threads))
            except Exception as e:
                report.notes.append(f"ORT CPU cannot run the model to emulate it: {str(e).splitlines()[0][:200]}")
            else:
                ref, _ = ort_runner(float_path, threads=threads, options=quiet_session_options(None, threads))
                names = [o.name for o in sess.get_outputs()]
                report.metrics["error_vs_float"] = compare_runners(ref, run, feeds, names)
                report.notes.append("error_vs_float measured with ORT CPU executing the QDQ graph")
    if data is None:  # made-up inputs can be invalid for the model (indices, lengths): inconclusive, not broken
        report.findings = [
            dataclasses.replace(f, severity=WARNING, message=f"{f.message} -- on random inputs, which may be invalid "
                                "for this model (indices out of range, lengths); pass --data with real inputs")
            if f.rule == "ORT-RUN" and f.severity == ERROR else f
            for f in report.findings
        ]
    n_fallback = len([f for f in report.findings if f.severity == FALLBACK])
    logger.info("%s: loaded=%s, %d errors, %d fallbacks", name, report.loaded, len(report.errors), n_fallback)
    return report
