"""Small helpers over onnx_ir shared by the passes."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import onnx_ir as ir

__all__ = [
    "FLOAT_TYPES",
    "const_array",
    "is_constant",
    "iter_graphs",
    "iter_nodes",
    "add_initializer",
    "FreshNames",
    "ensure_opset",
    "node_label",
]

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


def is_constant(value: ir.Value | None) -> bool:
    """True for an initializer that is not also a graph input, or a Constant node output."""
    if value is None:
        return False
    if value.is_graph_input():
        return False
    if value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain == ""


def producer_of(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The node that produces ``value`` when it is an ``op_type`` (any domain: a com.microsoft
    DequantizeLinear counts as one), else None."""
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type else None


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of a constant (initializer or Constant node), else None."""
    if not is_constant(value):
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    return tensor.numpy()


def iter_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """The graph and every subgraph (If/Loop/Scan bodies), outermost first."""
    yield graph
    yield from graph.subgraphs()


def iter_nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    """Every node of the graph and its subgraphs."""
    return graph.all_nodes()


class FreshNames:
    """Hands out value names not yet used anywhere in the model (onnx_ir names are global).

    Build one per pass run over the root graph; it remembers what it handed out."""

    def __init__(self, root: ir.Graph) -> None:
        self._taken: set[str] = set()
        for g in iter_graphs(root):
            self._taken.update(v.name for v in g.inputs if v.name)
            self._taken.update(g.initializers)
            for node in g:
                self._taken.update(v.name for v in node.outputs if v.name)
                if node.name:
                    self._taken.add(node.name)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self._taken:
            name = f"{base}_{i}"
            i += 1
        self._taken.add(name)
        return name


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as an initializer of ``graph`` under ``name`` (make it fresh
    with ``FreshNames`` first)."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array 1-d)
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def default_opset(model: ir.Model, missing: int | None = 1) -> int | None:
    """The version of the standard domain the model imports (spelt "" or "ai.onnx"); ``missing``
    when it imports none."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", missing))


def ensure_opset(model: ir.Model, domain: str, version: int) -> bool:
    """Import ``domain`` at ``version`` at least; True when the model changed."""
    current = model.opset_imports.get(domain)
    if current is not None and current >= version:
        return False
    model.opset_imports[domain] = version
    return True


def node_label(node: ir.Node) -> str:
    return node.name or f"<{node.op_type} -> {', '.join(v.name or '?' for v in node.outputs)}>"


class NodeBuilder:
    """Collects new nodes (with fresh, readable names) to insert before an anchor node."""

    def __init__(self, names: FreshNames, prefix: str) -> None:
        self.names = names
        self.prefix = prefix
        self.nodes: list[ir.Node] = []

    def op(
        self,
        op_type: str,
        inputs: list[ir.Value | None],
        attributes: dict | None = None,
        *,
        domain: str = "",
        outputs: tuple[str, ...] = ("out",),
    ) -> ir.Value | tuple[ir.Value, ...]:
        base = f"{self.prefix}/{op_type}"
        node = ir.node(
            op_type,
            inputs,
            attributes or {},
            domain=domain,
            outputs=[ir.Value(name=self.names(f"{base}_{o}")) for o in outputs],
            name=self.names(base),
        )
        self.nodes.append(node)
        return node.outputs[0] if len(outputs) == 1 else tuple(node.outputs)

    def insert_before(self, graph: ir.Graph, anchor: ir.Node) -> None:
        graph.insert_before(anchor, self.nodes)
        self.nodes = []


def replace_node_output(graph: ir.Graph, old_node: ir.Node, new_output: ir.Value) -> None:
    """Make ``new_output`` take the place (uses, graph outputs, name, type) of the single
    output of ``old_node``, then remove ``old_node``."""
    old = old_node.outputs[0]
    name = old.name
    new_output.type = old.type
    new_output.shape = old.shape
    old.replace_all_uses_with(new_output, replace_graph_outputs=True)
    graph.remove(old_node, safe=True)
    old.name = None
    new_output.name = name


def remove_if_unused(graph: ir.Graph, value: ir.Value) -> bool:
    """Drop an initializer nobody uses any more; True when removed. It is looked up in the
    graph that defines it (an outer graph, for a weight read inside an If/Loop body)."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return False
    graph = value.graph or graph
    if value.name in graph.initializers and graph.initializers[value.name] is value:
        graph.initializers.pop(value.name)
        return True
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.graph is not None:
        producer.graph.remove(producer, safe=True)
        return True
    return False


def replace_nodes(model: ir.Model, replacement: Callable[[ir.Node], ir.Node | None]) -> int:
    """For every single-output node of the model (subgraphs too) for which ``replacement``
    returns a new node, put that node after it and let its output take the old output's
    place (name, uses, graph outputs: :func:`replace_node_output`). Returns how many."""
    rewritten = 0
    for node in list(iter_nodes(model.graph)):
        new = replacement(node)
        if new is None:
            continue
        graph = node.graph
        graph.insert_after(node, new)
        replace_node_output(graph, node, new.outputs[0])
        rewritten += 1
    return rewritten


def rewrite_adds_as_sum(model: ir.Model, matches: Callable[[ir.Node], bool]) -> int:
    """Every Add ``matches`` accepts becomes a ``Sum`` of the same inputs (same values, same
    broadcasting; ONNX Runtime's Add-matching fusions do not take it: ResidualSumPass,
    BiasSumPass). Returns how many."""
    return replace_nodes(model, lambda n: ir.node("Sum", list(n.inputs), name=n.name or None) if matches(n) else None)
