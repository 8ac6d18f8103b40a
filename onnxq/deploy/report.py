"""What a deployment check found: per-node findings and the numbers of a runtime run."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

__all__ = ["Finding", "Rule", "DeployReport", "ERROR", "FALLBACK", "WARNING", "SEVERITIES"]

ERROR = "error"  # the runtime refuses the model (or the node) outright
FALLBACK = "fallback"  # the node runs, but in float / on another device
WARNING = "warning"  # runs, possibly slower or less accurate than it could
SEVERITIES = (ERROR, FALLBACK, WARNING)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One node (or the whole model when ``node`` is empty) that breaks a rule."""

    rule: str
    severity: str
    node: str
    op_type: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Rule:
    """A documented placement/format rule of a runtime. ``check(view)`` yields findings."""

    id: str
    severity: str
    summary: str
    source: str
    check: Callable[[Any], Iterable[Finding]]

    def finding(self, node, message: str, *, severity: str | None = None) -> Finding:
        name = "" if node is None else (node.name or f"<unnamed {node.op_type}>")
        op = "" if node is None else node.op_type
        return Finding(self.id, severity or self.severity, name, op, message)


@dataclasses.dataclass
class DeployReport:
    """The result of ``onnxq.deploy.verify``.

    loaded: the runtime (or the checker) accepted the model; findings: rule breaks and
    nodes that fall back to float; metrics: output error vs the reference, latencies,
    precision histograms, artefact paths (e.g. the ``.ort`` file)."""

    target: str
    runtime: str
    model: str
    loaded: bool = False
    findings: list[Finding] = dataclasses.field(default_factory=list)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    # checked against the runtime's documented rules only (TensorRT, QNN: they cannot run here)
    structural: bool = False

    def by_severity(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    @property
    def errors(self) -> list[Finding]:
        return self.by_severity(ERROR)

    @property
    def fallbacks(self) -> list[Finding]:
        return self.by_severity(FALLBACK)

    @property
    def ok(self) -> bool:
        return self.loaded and not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "runtime": self.runtime,
            "model": self.model,
            "loaded": self.loaded,
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "metrics": self.metrics,
            "notes": self.notes,
        }
