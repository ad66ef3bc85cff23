"""share-table-codes: a tied INT4 vocabulary table reads its head's codes instead of a copy.

``GatherBlockQuantized`` takes the table as ``[V, D * bits / 8]``; the translation reshapes the
head's ``[V, D / g, g * bits / 8]`` codes inside the graph, and the exporter's constant folding
turns that ``Reshape`` into an initializer of its own, which would store a tied table twice.
This pass points each such table back at the head's codes through a ``Reshape``: byte-equal
tables only, so nothing changes numerically.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .matmulnbits import DOMAIN
from .passes import OnnxPassResult, register_onnx_pass


@register_onnx_pass(
    "share-table-codes", "INT4 vocabulary tables that copy a tied head's codes read those codes"
)
def share_table_codes(model: onnx.ModelProto) -> OnnxPassResult:
    shared = _share(model)
    report = [f"{shared} table(s) now read a head's codes"] if shared else []
    return OnnxPassResult(model, shared > 0, {"shared": shared}, report)


def _share(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place (module docstring); returns how many tables were shared."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    tables = {
        n.input[0]
        for n in graph.node
        if n.op_type == "GatherBlockQuantized" and n.input[0] in inits
    }
    sizes = {int(np.prod(inits[t].dims)) for t in tables}
    heads: dict[
        bytes, str
    ] = {}  # only heads the size of a table: the other layers' bytes are never copied
    for node in graph.node:
        if (
            node.op_type == "MatMulNBits"
            and node.domain == DOMAIN
            and node.input[1] in inits
            and int(np.prod(inits[node.input[1]].dims)) in sizes
        ):
            heads.setdefault(numpy_helper.to_array(inits[node.input[1]]).tobytes(), node.input[1])
    nodes, shared, dropped = [], 0, set()
    for node in graph.node:
        table = node.input[0] if node.op_type == "GatherBlockQuantized" else None
        head = (
            heads.get(numpy_helper.to_array(inits[table]).tobytes())
            if table in tables and heads
            else None
        )
        if head is not None and head != table:
            shape = f"{table}.shape"
            graph.initializer.append(
                numpy_helper.from_array(np.array(inits[table].dims, np.int64), shape)
            )
            nodes.append(
                helper.make_node(
                    "Reshape", [head, shape], [f"{table}.shared"], name=f"{table}.Reshape"
                )
            )
            node.input[0] = f"{table}.shared"
            dropped.add(table)
            shared += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return shared
