"""InlineIfBranchesPass: replace main-graph If nodes by the branch a caller says is taken.

``taken`` maps an If node, named by its first output, to the branch that runs (True: then,
False: else). The branch's nodes and initializers move into the main graph in place of the
If, and each If output becomes an ``Identity`` of the branch output, under the If output's
name. Values keep their names (ONNX forbids a subgraph name that shadows an outer one, so
nothing collides), which is what lets ``onnxq compare`` match the layers of a model whose
whole network sits in If branches (silero-vad: one If on the sample rate) between a float
model and its quantized version by name.

Used by a caller that has found out which branch its data takes (compare runs the float
model once for that); the pass itself only rewrites. Ifs it is not told about stay.
"""

from __future__ import annotations

from typing import Mapping

import onnx_ir as ir

__all__ = ["InlineIfBranchesPass"]


class InlineIfBranchesPass(ir.passes.InPlacePass):
    """Inline the taken branch of the main graph's If nodes named in ``taken``."""

    def __init__(self, taken: Mapping[str, bool]) -> None:
        super().__init__()
        self.taken = dict(taken)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type != "If" or node.domain not in ("", "ai.onnx") or not node.outputs:
                continue
            key = node.outputs[0].name
            if key not in self.taken:
                continue
            attr = node.attributes.get("then_branch" if self.taken[key] else "else_branch")
            if attr is None:
                continue
            _inline(graph, node, attr.as_graph())
            modified = True
        return ir.passes.PassResult(model, modified=modified)


def _inline(graph: ir.Graph, node: ir.Node, branch: ir.Graph) -> None:
    for name in list(branch.initializers):
        value = branch.initializers.pop(name)
        graph.register_initializer(value)
    nodes = list(branch)
    branch.remove(nodes)  # unlinked only: their inputs and uses stay as they are
    graph.insert_before(node, nodes)
    results = list(branch.outputs)
    branch.outputs.clear()
    copies = []
    for old, result in zip(node.outputs, results):
        copy = ir.node("Identity", [result], name=f"{node.name or 'If'}/{old.name}/taken")
        graph.insert_before(node, copy)
        new = copy.outputs[0]
        new.type, new.shape = old.type, old.shape
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        copies.append((old.name, new))
    graph.remove(node, safe=True)
    for old in node.outputs:
        old.name = None
    for name, new in copies:
        new.name = name
