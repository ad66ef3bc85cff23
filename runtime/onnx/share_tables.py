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


def _source(name: str, producer: dict, inits: dict) -> str | None:
    """The initializer a table comes from, through the ``Reshape`` and ``Slice`` the translation
    puts before the lookup (the exporter folds some of them into initializers, not always all)."""
    while name not in inits:
        node = producer.get(name)
        if node is None or node.op_type not in ("Reshape", "Slice"):
            return None
        name = node.input[0]
    return name


def _copies(model: onnx.ModelProto) -> dict[str, tuple[str, int | None]]:
    """Each table initializer equal to a MatMulNBits head's codes -> (the head's codes, the
    width in bytes to cut its rows to, or None where the table is the codes as they are). A
    table either has the head's shape ``[V, L, blob]``, or is the rows ``[V, W]`` of the head's
    blob cut to the table's width ``W <= L blob`` (a partial last group pads the blob)."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    tables = {
        _source(n.input[0], producer, inits)
        for n in model.graph.node
        if n.op_type == "GatherBlockQuantized"
    } - {None}
    arrays = {t: numpy_helper.to_array(inits[t]) for t in tables}
    found: dict[str, tuple[str, int | None]] = {}
    for node in model.graph.node:
        codes = node.input[1] if node.op_type == "MatMulNBits" and node.domain == DOMAIN else None
        if codes not in inits or len(inits[codes].dims) != 3 or codes in tables:
            continue
        rows, groups, blob = inits[codes].dims
        candidates = [
            t
            for t, a in arrays.items()
            if t not in found and a.shape[0] == rows and a.size <= rows * groups * blob
        ]
        if not candidates:  # only a head the size of a table is read: other layers' bytes never are
            continue
        head = numpy_helper.to_array(inits[codes])
        for t in candidates:
            if arrays[t].shape == head.shape and np.array_equal(arrays[t], head):
                found[t] = (codes, None)
            elif arrays[t].ndim == 2:
                width = arrays[t].shape[1]
                if np.array_equal(head.reshape(rows, -1)[:, :width], arrays[t]):
                    found[t] = (codes, width)
    return found


def _share(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place (module docstring); returns how many tables were shared."""
    graph = model.graph
    found = _copies(model)
    inits = {i.name: i for i in graph.initializer}
    nodes, views = [], {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name not in found:
                continue
            head, width = found[name]
            if width is None:  # the same shape and bytes: read the head's codes themselves
                node.input[i] = head
                continue
            if name not in views:
                rows, groups, blob = inits[head].dims
                nodes += _table_view(graph, name, head, rows, groups * blob, width)
                views[name] = f"{name}.shared"
            node.input[i] = views[name]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [i for i in graph.initializer if i.name not in found]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return len(found)


def _table_view(graph, table: str, head: str, rows: int, full: int, width: int) -> list:
    """Nodes reading a head's codes ``[V, L, blob]`` as the table ``[V, width]``: a ``Reshape``,
    and a ``Slice`` when a partial last group padded the head's blob past the table's width."""
    shape = f"{table}.shape"
    graph.initializer.append(numpy_helper.from_array(np.array([rows, full], np.int64), shape))
    out = f"{table}.shared" if width == full else f"{table}.rows"
    nodes = [helper.make_node("Reshape", [head, shape], [out], name=f"{table}.Reshape")]
    if width != full:
        ends = f"{table}.width"
        graph.initializer.append(numpy_helper.from_array(np.array([width], np.int64), ends))
        graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), f"{table}.start"))
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"{table}.axis"))
        nodes.append(
            helper.make_node(
                "Slice",
                [out, f"{table}.start", ends, f"{table}.axis"],
                [f"{table}.shared"],
                name=f"{table}.Slice",
            )
        )
    return nodes
