"""fuse-qkv: the three projections feeding a ``GroupQueryAttention`` become one, a packed query.

The fused decoder export gives each attention its q, k and v projections of one input ``x``;
GroupQueryAttention also takes them packed, ``[B, S, (Hq + 2 Hkv) D]`` with key and value
empty. Output rows are independent in every tensor of a projection, so three become one by
concatenating along the outputs, and nothing is recomputed::

    MatMulNBits   codes [N, L, blob], scales [N, L], zero points [N, ...] (packed or float),
                  bias [N] (zeros where a projection has none)          -> along N
    correction    Add(y, MatMul(group_sums(x), D^T [L, N]))  (a split fold; zeros where absent)
    float         MatMul(x, W^T [K, N]) [+ Add(bias [N])]               -> along N

Projections fuse only when all three are the same kind with the same ``K``, bits, block size,
accuracy level and zero-point form, each read by the attention alone. The new nodes take the
attention's place in the graph (every input they read is computed by then). The three branches
vary independently (a split fold leaves out corrections that are exactly zero), so the match is
written as a small parser per branch (``_projection``) rather than one pattern per combination.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .matmulnbits import DOMAIN
from .passes import OnnxPassResult, register_onnx_pass


@dataclass
class Projection:
    """One of q, k, v: ``x W^T [+ bias] [+ group_sums(x) D^T]`` and the nodes that compute it."""

    x: str
    nodes: list[onnx.NodeProto]
    weight: str  # MatMulNBits codes, or the float MatMul's [K, N] initializer
    n: int
    attrs: dict | None = None  # MatMulNBits' attributes; None for a float MatMul
    scales: str | None = None
    zeros: str | None = None
    bias: str | None = None
    sums: str | None = None  # the correction's group sums of x
    correction: str | None = None  # D^T [L, N]


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {i.name: i for i in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output if o}
        self.readers: dict[str, int] = {}
        for n in model.graph.node:
            for i in n.input:
                self.readers[i] = self.readers.get(i, 0) + 1
        for o in model.graph.output:
            self.readers[o.name] = self.readers.get(o.name, 0) + 1

    def array(self, name: str | None) -> np.ndarray | None:
        return (
            None
            if name is None or name not in self.inits
            else numpy_helper.to_array(self.inits[name])
        )

    def only_reader(self, value: str) -> bool:
        return self.readers.get(value, 0) == 1


def _input(node: onnx.NodeProto, i: int) -> str | None:
    return node.input[i] if len(node.input) > i and node.input[i] else None


def _projection(g: _Graph, value: str) -> Projection | None:
    """The projection computing ``value``, or None when it is not one this pass fuses."""
    node = g.producer.get(value)
    if node is None or not g.only_reader(value):
        return None
    if node.op_type == "Add" and node.domain in ("", "ai.onnx"):
        inner = [g.producer.get(i) for i in node.input]
        if node.input[1] in g.inits:  # a float projection's bias
            base = _projection(g, node.input[0])
            if base is None or base.attrs is not None or base.bias is not None:
                return None
            base.bias, base.nodes = node.input[1], [*base.nodes, node]
            return base
        for main, extra in ((0, 1), (1, 0)):
            mm = inner[extra]
            if (
                mm is not None
                and mm.op_type == "MatMul"
                and mm.input[1] in g.inits
                and g.only_reader(mm.output[0])
            ):
                base = _projection(g, node.input[main])
                if base is not None and base.attrs is not None and base.correction is None:
                    base.sums, base.correction = mm.input[0], mm.input[1]
                    base.nodes = [*base.nodes, mm, node]
                    return base
        return None
    if node.op_type == "MatMulNBits" and node.domain == DOMAIN:
        if _input(node, 4) is not None or node.input[1] not in g.inits:  # g_idx: not ours
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return Projection(
            node.input[0],
            [node],
            node.input[1],
            int(attrs["N"]),
            attrs,
            node.input[2],
            _input(node, 3),
            _input(node, 5),
        )
    if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.input[1] in g.inits:
        w = g.inits[node.input[1]]
        return (
            Projection(node.input[0], [node], node.input[1], int(w.dims[-1]))
            if len(w.dims) == 2
            else None
        )
    return None


def _compatible(parts: list[Projection], g: _Graph) -> str | None:
    """Why the three cannot be one projection, or None."""
    if len({p.x for p in parts}) != 1:
        return "they read different inputs"
    if len({p.attrs is None for p in parts}) != 1:
        return "float and integer projections mixed"
    if parts[0].attrs is None:
        shapes = {tuple(g.inits[p.weight].dims[:-1]) for p in parts}
        return None if len(shapes) == 1 else "float weights of different widths"
    keys = ("K", "bits", "block_size", "accuracy_level")
    if len({tuple(p.attrs.get(k) for k in keys) for p in parts}) != 1:
        return "K, bits, block size or accuracy level differ"
    zeros = {None if p.zeros is None else g.inits[p.zeros].data_type for p in parts}
    if len(zeros) != 1:
        return "zero-point forms differ"
    if len({p.sums for p in parts if p.sums is not None}) > 1:
        return "their corrections read different group sums"
    return None


def _joined(g: _Graph, parts: list[Projection], field: str, axis: int, empty) -> np.ndarray | None:
    """``field``'s initializers concatenated along ``axis``; ``empty(p)`` where a part has none."""
    arrays = [g.array(getattr(p, field)) for p in parts]
    if all(a is None for a in arrays):
        return None
    ref = next(a for a in arrays if a is not None)
    return np.concatenate(
        [a if a is not None else empty(p, ref) for a, p in zip(arrays, parts)], axis
    )


def _fused_nodes(g: _Graph, parts: list[Projection], stem: str) -> tuple[list[onnx.NodeProto], str]:
    """The nodes computing the packed projection, and the name of their output."""
    out = f"{stem}.qkv_proj"
    n = sum(p.n for p in parts)

    def init(name: str, array: np.ndarray) -> str:
        g.model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    if parts[0].attrs is None:
        w = init(f"{stem}.qkv_proj.weight", _joined(g, parts, "weight", 1, None))
        bias = _joined(g, parts, "bias", 0, lambda p, ref: np.zeros(p.n, ref.dtype))
        nodes = [
            helper.make_node(
                "MatMul",
                [parts[0].x, w],
                [out if bias is None else f"{out}.mm"],
                name=f"{stem}/qkv_proj/MatMul",
            )
        ]
        if bias is not None:
            nodes.append(
                helper.make_node(
                    "Add",
                    [f"{out}.mm", init(f"{stem}.qkv_proj.bias", bias)],
                    [out],
                    name=f"{stem}/qkv_proj/Add",
                )
            )
        return nodes, out
    inputs = [
        parts[0].x,
        init(f"{stem}.qkv_proj.qweight", _joined(g, parts, "weight", 0, None)),
        init(f"{stem}.qkv_proj.scales", _joined(g, parts, "scales", 0, None)),
    ]
    zeros = _joined(g, parts, "zeros", 0, None)
    bias = _joined(g, parts, "bias", 0, lambda p, ref: np.zeros(p.n, ref.dtype))
    inputs.append("" if zeros is None else init(f"{stem}.qkv_proj.zeros", zeros))
    if bias is not None:
        inputs += ["", init(f"{stem}.qkv_proj.bias", bias)]
    attrs = {**parts[0].attrs, "N": n}
    correction = _joined(
        g, parts, "correction", 1, lambda p, ref: np.zeros((ref.shape[0], p.n), ref.dtype)
    )
    mm_out = out if correction is None else f"{out}.int"
    nodes = [
        helper.make_node(
            "MatMulNBits",
            inputs,
            [mm_out],
            name=f"{stem}/qkv_proj/MatMulNBits",
            domain=DOMAIN,
            **attrs,
        )
    ]
    if correction is not None:
        sums = next(p.sums for p in parts if p.sums is not None)
        d_t = init(f"{stem}.qkv_proj.correction", correction)
        nodes += [
            helper.make_node(
                "MatMul", [sums, d_t], [f"{out}.fix"], name=f"{stem}/qkv_proj/correction"
            ),
            helper.make_node("Add", [mm_out, f"{out}.fix"], [out], name=f"{stem}/qkv_proj/Add"),
        ]
    return nodes, out


def _stem(q: Projection, attention: onnx.NodeProto) -> str:
    """A name for the packed projection: the attention module's (``...self_attn`` from the q
    projection's ``...self_attn.q_proj.qweight``), else the attention node's."""
    parts = q.weight.split(".")
    return ".".join(parts[:-2]) if len(parts) > 2 else attention.name or attention.output[0]


@register_onnx_pass(
    "fuse-qkv", "the q, k and v projections of a GroupQueryAttention -> one packed projection"
)
def fuse_qkv(model: onnx.ModelProto) -> OnnxPassResult:
    g = _Graph(model)
    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    spent: set[str | None] = set()  # the parts' initializers: dropped once nothing reads them
    report = []
    for node in model.graph.node:
        if node.op_type != "GroupQueryAttention" or not (_input(node, 1) and _input(node, 2)):
            continue
        parts = [_projection(g, node.input[i]) for i in range(3)]
        why = (
            "a projection is not a MatMulNBits or MatMul read by the attention alone"
            if None in parts
            else _compatible(parts, g)
        )
        if why:
            report.append(f"{node.name}: not fused ({why})")
            continue
        nodes, packed = _fused_nodes(g, parts, _stem(parts[0], node))
        gqa = onnx.NodeProto()
        gqa.CopyFrom(node)
        gqa.input[0], gqa.input[1], gqa.input[2] = packed, "", ""
        replace[id(node)] = [*nodes, gqa]
        drop.update(id(n) for p in parts for n in p.nodes)
        spent.update(
            getattr(p, f)
            for p in parts
            for f in ("weight", "scales", "zeros", "bias", "correction")
        )
        report.append(
            f"{node.name}: q, k, v -> one projection of {sum(p.n for p in parts)} outputs"
        )
    if not replace:
        return OnnxPassResult(model, False, {"fused": 0}, report)
    nodes = [m for n in model.graph.node if id(n) not in drop for m in replace.get(id(n), [n])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used or i.name not in spent]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return OnnxPassResult(model, True, {"fused": len(replace)}, report)
