"""Graph fusions over an exported ``onnx.ModelProto`` that onnxruntime's CPU optimiser does not
make.

``fuse_skip_norm``: a residual ``Add(a, b)`` feeding ``SimplifiedLayerNormalization(., gamma)``
becomes one ``com.microsoft::SkipSimplifiedLayerNormalization(a, b, gamma)``::

    s = a + b;  y = gamma * s / sqrt(mean(s^2, -1) + eps)      outputs (y, "", "", s)

The fused node's 4th output (``input_skip_bias_sum``) takes the Add's output name, so the next
residual still reads ``s``; the fused node sits where the Add was (its inputs are ready there,
and the norm's ``gamma`` is an initializer). An Add with an initializer input (a bias, not a
residual) is left alone.
"""

from __future__ import annotations

import onnx
from onnx import helper

from .matmulnbits import DOMAIN


def fuse_skip_norm(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place; returns how many pairs were fused."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {i.name for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    replace, drop = {}, set()
    for node in graph.node:
        if node.op_type != "SimplifiedLayerNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        add = producer.get(node.input[0])
        if (
            add is None
            or add.op_type != "Add"
            or add.domain not in ("", "ai.onnx")
            or id(add) in replace
            or any(i in initializers for i in add.input)
            or len(node.input) < 2
        ):
            continue
        eps = next(
            (helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5
        )
        keeps_sum = consumers.get(add.output[0], 0) > 1 or add.output[0] in {
            o.name for o in graph.output
        }
        replace[id(add)] = helper.make_node(
            "SkipSimplifiedLayerNormalization",
            [add.input[0], add.input[1], node.input[1]],
            [node.output[0], "", "", add.output[0] if keeps_sum else ""],
            name=(node.name or "norm") + "/skip",
            domain=DOMAIN,
            epsilon=eps,
        )
        drop.add(id(node))
    if not replace:
        return 0
    nodes = [replace.get(id(n), n) for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return len(replace)
