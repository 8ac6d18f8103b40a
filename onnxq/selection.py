"""Which nodes a recipe touches, and why the others are left alone."""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable

import onnx_ir as ir

from onnxq.recipes import NodeSelection

__all__ = ["Decision", "name_matches", "select"]

_REGEX_CHARS = set(".^$*+?{}[]\\|()")


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """Exact name match, or a full regex match for patterns with regex characters."""
    for pattern in patterns:
        if pattern == name:
            return True
        if _REGEX_CHARS & set(pattern) and re.fullmatch(pattern, name):
            return True
    return False


@dataclasses.dataclass(frozen=True)
class Decision:
    """One candidate node: selected, or skipped with a reason a user can read."""

    node: ir.Node
    selected: bool
    reason: str = ""

    @property
    def name(self) -> str:
        return self.node.name or f"<unnamed {self.node.op_type}>"


def select(
    nodes: Iterable[ir.Node],
    selection: NodeSelection,
    check: Callable[[ir.Node], str | None],
) -> list[Decision]:
    """Decisions for every node whose op type the selection names.

    ``check(node)`` returns None when the node can be quantized, else the reason it cannot.
    Nodes of other op types are not reported."""
    decisions = []
    for node in nodes:
        if node.domain not in ("", "ai.onnx") or node.op_type not in selection.op_types:
            continue
        name = node.name or ""
        if selection.include and not name_matches(name, selection.include):
            decisions.append(Decision(node, False, "not in --include"))
            continue
        if name_matches(name, selection.exclude):
            decisions.append(Decision(node, False, "excluded by name"))
            continue
        reason = check(node)
        decisions.append(Decision(node, reason is None, reason or ""))
    return decisions
