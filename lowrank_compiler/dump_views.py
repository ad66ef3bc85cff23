"""A graph as rows for the HTML dumps: ``fx_rows`` (an FX graph) and ``onnx_rows`` (an ONNX one).

Each ``Row`` is one node: its anchor key (the name a pass's changes list it under), name, op
badge and class, target, inputs as escaped HTML (producer nodes linked to their rows), output
shape, the layer it belongs to and the keys of the rows it reads.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

import onnx
import torch.fx as fx

from .dump_ops import fx_layer, onnx_layer
from .runtime.onnx.inspection import value_types
from .runtime.onnx.passes import node_key


@dataclass(frozen=True)
class Row:
    key: str
    name: str
    op: str
    op_class: str
    target: str
    inputs: str  # escaped HTML
    shape: str
    layer: str
    reads: tuple[str, ...] = ()  # keys of the rows whose outputs it takes


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # not allowed in XML, even escaped


def esc(value: Any) -> str:
    """Text from a graph as HTML or SVG text: escaped, control characters replaced."""
    return html.escape(_CONTROL.sub("?", str(value)), quote=True)


def wrap_name(value: Any) -> str:
    """An escaped dotted or snake_case name that may wrap after each '.', '_' and ','."""
    return re.sub(r"([._,])", r"\1<wbr>", esc(value))


def _target(node: fx.Node) -> str:
    if isinstance(node.target, str):
        return node.target
    if hasattr(node.target, "_schema"):  # torch.ops.aten.x.default
        return str(node.target)
    try:
        return fx.node._get_qualified_name(node.target).replace("_operator.", "operator.", 1)
    except Exception:  # an object without a module path: its repr is still readable
        return repr(node.target)


def _arg(value: Any, limit: int = 160) -> str:
    """An argument as escaped HTML: nodes link to their rows, long literals are cut."""
    if isinstance(value, fx.Node):
        return f'<a href="#n-{esc(value.name)}">%{wrap_name(value.name)}</a>'
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_arg(v, limit) for v in value)
        return (
            f"[{inner}]"
            if isinstance(value, list)
            else f"({inner}{',' if len(value) == 1 else ''})"
        )
    if isinstance(value, dict):
        return "{" + ", ".join(f"{esc(k)}: {_arg(v, limit)}" for k, v in value.items()) + "}"
    text = repr(value)
    return esc(text if len(text) <= limit else text[: limit - 3] + "...")


def _inputs(node: fx.Node) -> str:
    parts = [_arg(a) for a in node.args] + [f"{esc(k)}={_arg(v)}" for k, v in node.kwargs.items()]
    return ", ".join(parts)


def _shape(node: fx.Node) -> str:
    val = node.meta.get("val", node.meta.get("tensor_meta"))
    shape, dtype = getattr(val, "shape", None), getattr(val, "dtype", None)
    if shape is None:
        return ""
    dt = str(dtype).replace("torch.", "") if dtype is not None else ""
    return f"{dt}[{', '.join(str(d) for d in shape)}]"


def fx_rows(gm: fx.GraphModule) -> list[Row]:
    return [
        Row(
            n.name,
            n.name,
            n.op,
            n.op,
            _target(n),
            _inputs(n),
            _shape(n),
            fx_layer(n),
            tuple(i.name for i in n.all_input_nodes),
        )
        for n in gm.graph.nodes
    ]


def onnx_rows(model: onnx.ModelProto) -> list[Row]:
    """One row per node; inputs made by a node link to its row, initializers show their type."""
    types = value_types(model)
    producer = {o: node_key(n) for n in model.graph.node for o in n.output if o}
    inits = {t.name for t in model.graph.initializer}
    rows = []
    for n in model.graph.node:
        ins = []
        for i in n.input:
            if not i:
                ins.append("-")
            elif i in producer:
                ins.append(f'<a href="#n-{esc(producer[i])}">%{wrap_name(i)}</a>')
            else:
                ins.append(f"{wrap_name(i)}: {esc(types.get(i, '?'))}")
        domain = n.domain if n.domain not in ("", "ai.onnx") else ""
        op = f"{domain}::{n.op_type}" if domain else n.op_type
        shape = ", ".join(types.get(o, "?") for o in n.output if o)
        layer = onnx_layer(n, inits)
        rows.append(
            Row(
                node_key(n),
                n.name or node_key(n),
                op,
                "custom" if domain else "standard",
                ", ".join(n.output),
                ", ".join(ins),
                shape,
                layer,
                tuple(dict.fromkeys(producer[i] for i in n.input if i in producer)),
            )
        )
    return rows
