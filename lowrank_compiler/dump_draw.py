"""Subgraph drawings for the dump pages: a few nodes of a graph as a self-contained SVG.

``draw_nodes(ops, names)`` draws the ``Op``s (``dump_ops``) named in ``names`` left to right: a
box per node (``<g class="node">``: its label, then its tensors with dtypes and shapes), a
dashed port (``<g class="port">``) per value coming from or going to the rest of the graph, and
an edge per use. A node's column is the length of the longest path to it from the ports, so
data flows left to right; adapters' tensors are purple, the frozen base's grey-blue. Shape
arithmetic (``x.shape[-1] // 16``, ONNX ``Shape``/``Gather``/``Concat`` on int64) is left out.
``draw_layer(ops, layer)`` draws one layer's nodes; ``layer_svg(model, layer)`` (also
``lowrank_compiler.layer_svg``) any layer of a compiled model or an ONNX file, on demand.
``dump_select`` picks what a dump page draws.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace

import onnx
import torch.fx as fx

from .dump_ops import Op, fx_ops, onnx_ops
from .dump_views import esc
from .runtime.onnx.file import read_model

CHAR_W, LINE_H, PAD, GAP_X, GAP_Y = 7.4, 15, 8, 56, 14
MAX_NODES = 150  # a drawing of more is no longer readable (and slow to lay out)
_FILL = {"op": "#e8f0fe", "adapter": "#efe3fb", "base": "#e4e9f1", "io": "#f4f4f4"}
_STROKE = {"op": "#2747a8", "adapter": "#7b4fb8", "base": "#5b6b8c", "io": "#888"}


@dataclass
class _Box:
    key: str
    label: str
    lines: tuple[str, ...]
    role: str
    port: bool
    col: int = 0
    x: float = 0.0
    y: float = 0.0
    fan_in: int = 0  # edges that end here: the box is tall enough to keep them apart

    @property
    def w(self) -> float:
        longest = max([len(self.label) + 2, *(len(t) for t in self.lines)] or [4])
        return longest * CHAR_W + 2 * PAD

    @property
    def h(self) -> float:
        return max((1 + len(self.lines)) * LINE_H, self.fan_in * 12) + 2 * PAD - 4


def subgraph(ops: list[Op], names: set[str]) -> tuple[list[Op], list[str], list[str]]:
    """The ops in ``names``, the values they read from outside and the nodes outside that read
    them; shape arithmetic (``Op.shape_only``) left out."""
    hidden = {o.name for o in ops if o.shape_only}
    inside = [
        replace(o, inputs=tuple(i for i in o.inputs if i not in hidden))
        for o in ops
        if o.name in names and not o.shape_only
    ]
    names = {o.name for o in inside}
    ins = list(dict.fromkeys(i for o in inside for i in o.inputs if i not in names))
    outs = list(
        dict.fromkeys(
            o.name
            for o in ops
            if o.name not in names and not o.shape_only
            for i in o.inputs
            if i in names
        )
    )
    return inside, ins, outs


def _layout(
    ops: list[Op], ins: list[str], outs: list[str], everything: dict[str, Op]
) -> tuple[dict[str, _Box], list[tuple[str, str]]]:
    """The boxes (ports, then nodes in graph order, then ports) with their columns, and the
    edges between them."""
    boxes: dict[str, _Box] = {}
    for i in ins:
        src = everything.get(i)
        lines = tuple(x for x in (src.lines[-1:] if src else ()) if x)
        boxes[f"in:{i}"] = _Box(f"in:{i}", i.removeprefix("input:"), lines, "io", True)
    for o in ops:
        boxes[o.name] = _Box(o.name, o.label, tuple(x for x in o.lines if x), o.role, False)
    edges = [(f"in:{i}" if f"in:{i}" in boxes else i, o.name) for o in ops for i in o.inputs]
    names = {o.name for o in ops}
    for out in outs:
        boxes[f"out:{out}"] = _Box(f"out:{out}", out, (), "io", True)
        for i in everything[out].inputs:
            if i in names:
                edges.append((i, f"out:{out}"))
    edges = [(a, b) for a, b in dict.fromkeys(edges) if a in boxes and b in boxes]
    into: dict[str, list[str]] = {}
    for a, b in edges:
        into.setdefault(b, []).append(a)
    for key in boxes:  # ops come in graph order, so one sweep finds the longest paths
        for a in into.get(key, ()):
            boxes[key].col = max(boxes[key].col, boxes[a].col + 1)
    last = max((b.col for b in boxes.values() if not b.port), default=0) + 1
    for key in boxes:
        if key.startswith("out:"):
            boxes[key].col = last
    return boxes, edges


def draw_layer(ops: list[Op], layer: str, title: str = "") -> str:
    """The SVG of ``layer``'s nodes in ``ops``; '' if it has none."""
    return draw_nodes(ops, {o.name for o in ops if o.layer == layer}, title)


def draw_nodes(ops: list[Op], names: set[str], title: str = "") -> str:
    """The SVG of the nodes ``names`` of ``ops`` (module docstring); '' if none is drawn."""
    inside, ins, outs = subgraph(ops, names)
    if not inside:
        return ""
    if len(inside) > MAX_NODES:
        return _too_many(len(inside), title)
    boxes, edges = _layout(inside, ins, outs, {o.name: o for o in ops})
    slots: dict[str, list[str]] = {}
    for a, b in edges:
        slots.setdefault(b, []).append(a)
        boxes[b].fan_in = len(slots[b])
    cols: dict[int, list[_Box]] = {}
    for b in boxes.values():
        cols.setdefault(b.col, []).append(b)
    x, top = PAD, 24 if title else PAD
    height = 0.0
    for c in sorted(cols):
        y = top
        for b in cols[c]:
            b.x, b.y = x, y
            y += b.h + GAP_Y
        height = max(height, y)
        x += max(b.w for b in cols[c]) + GAP_X
    width = x - GAP_X + PAD
    # marker ids are document-wide: one per drawing, stable across runs
    mark = "m" + hashlib.sha1(f"{title}|{sorted(names)}".encode()).hexdigest()[:10]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="layer" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{esc(title or "subgraph")}" font-family="ui-monospace,monospace" '
        'font-size="12">',
        f'<defs><marker id="{mark}" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0L8,4L0,8z" fill="#6b7385"/></marker></defs>',
    ]
    if title:
        parts.append(f'<text x="{PAD}" y="16" font-weight="bold">{esc(title)}</text>')
    for a, b in edges:
        k = slots[b].index(a)
        parts.append(_edge(boxes[a], boxes[b], (k + 1) / (len(slots[b]) + 1), mark))
    parts += [_box(b) for b in boxes.values()]
    parts.append("</svg>")
    return "\n".join(parts)


def _too_many(count: int, title: str) -> str:
    """A small SVG saying the drawing was left out (a rewrite too large to read as one)."""
    text = f"{title}: {count} nodes, more than {MAX_NODES} to draw; see the table"
    width = len(text) * CHAR_W + 2 * PAD
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="layer" width="{width:.0f}" height="30" '
        f'font-family="ui-monospace,monospace" font-size="12"><text x="{PAD}" y="20">'
        f"{esc(text)}</text></svg>"
    )


def _edge(a: _Box, b: _Box, at: float, mark: str) -> str:
    """A curve from ``a``'s right side to ``b``'s left, ``at`` (0..1) of the way down it."""
    x1, y1 = a.x + a.w, a.y + a.h / 2
    x2, y2 = b.x, b.y + b.h * at
    mid = (x1 + x2) / 2
    return (
        f'<path class="edge" d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} '
        f'{x2:.1f},{y2:.1f}" fill="none" stroke="#6b7385" marker-end="url(#{mark})"/>'
    )


def _box(b: _Box) -> str:
    kind = "port" if b.port else "node"
    dash = ' stroke-dasharray="4 3"' if b.port else ""
    text = [
        f'<text x="{b.x + PAD:.1f}" y="{b.y + PAD + 10:.1f}" font-weight="bold" '
        f'fill="{_STROKE[b.role]}">{esc(b.label)}</text>'
    ]
    text += [
        f'<text x="{b.x + PAD:.1f}" y="{b.y + PAD + 10 + LINE_H * (i + 1):.1f}" '
        f'fill="#333">{esc(line)}</text>'
        for i, line in enumerate(b.lines)
    ]
    return (
        f'<g class="{kind} {b.role}" data-node="{esc(b.key)}"><title>{esc(b.key)}</title>'
        f'<rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" height="{b.h:.1f}" rx="5" '
        f'fill="{_FILL[b.role]}" stroke="{_STROKE[b.role]}"{dash}/>' + "".join(text) + "</g>"
    )


def layer_svg(source, layer: str) -> str:
    """The SVG of one layer, on demand: ``source`` a model ``compile`` returned (its traced
    graph), an ``fx.GraphModule``, an ``onnx.ModelProto`` or an ONNX file's path."""
    from .api import compile_info  # here: api's pass manager draws its dumps with this module

    if isinstance(source, (str, os.PathLike)):
        source = read_model(source)
    if isinstance(source, onnx.ModelProto):
        ops = onnx_ops(source)
    elif isinstance(source, fx.GraphModule):
        ops = fx_ops(source)
    else:
        info = compile_info(source)
        if info is None or info.graph is None:
            raise ValueError(
                f"{type(source).__name__} has no traced graph to draw: pass a model compile "
                "returned (traced, not matched by name), a GraphModule, or an ONNX model or path"
            )
        ops = fx_ops(info.graph)
    svg = draw_layer(ops, layer, layer)
    if not svg:
        known = sorted({o.layer for o in ops if o.layer and not o.shape_only})
        raise ValueError(
            f"no layer {layer!r} in the graph; its layers include {known[:8]}"
            + (f" and {len(known) - 8} more" if len(known) > 8 else "")
        )
    return svg


__all__ = ["draw_layer", "draw_nodes", "layer_svg", "subgraph"]
