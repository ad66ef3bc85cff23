"""A graph as drawable operators: ``fx_ops`` (an FX graph) and ``onnx_ops`` (an ONNX one).

Each ``Op`` is one node reduced to what a drawing shows: a label (``Linear [384->384]``,
``lrqat_linear``, ``MatMulNBits``), lines under it (its tensors with dtypes and shapes, its
output's), a role (``op``; ``adapter`` or ``base`` for a tensor an FX ``get_attr`` reads), the
names of the nodes it reads and the layer it belongs to (a module's dotted name). Ops are plain
strings and tuples, so a snapshot taken before a pass survives the pass rewriting the graph in
place; ``dump_draw`` lays them out.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

import onnx
import torch
import torch.fx as fx
from torch import nn

from .passes.helpers import graph as G
from .runtime.layers.protocol import AdapterLayer, Layer
from .runtime.onnx.inspection import value_types
from .runtime.onnx.passes import node_key

_SHORT = {
    "float32": "f32",
    "float16": "f16",
    "bfloat16": "bf16",
    "float64": "f64",
    "uint8": "u8",
    "int8": "i8",
    "int32": "i32",
    "int64": "i64",
    "bool": "bool",
}


@dataclass(frozen=True)
class Op:
    name: str
    label: str
    lines: tuple[str, ...]
    role: str  # op | adapter | base | io
    inputs: tuple[str, ...]
    layer: str
    shape_only: bool = False  # computes a shape, not data: drawings leave it out


def tensor_text(name: str, value: Any) -> str:
    """``name dtype[shape]`` with short dtype names (``codes u8[384, 192]``)."""
    dtype = str(getattr(value, "dtype", "")).replace("torch.", "")
    shape = ", ".join(str(d) for d in getattr(value, "shape", ()))
    return f"{name} {_SHORT.get(dtype, dtype)}[{shape}]".strip()


def _out(val: Any) -> str:
    return tensor_text("->", val) if getattr(val, "shape", None) is not None else ""


def fx_layer(node: fx.Node) -> str:
    """The layer a node belongs to: the adapter it was inlined from, the module it calls, or
    the innermost module whose forward made it."""
    if node.meta.get(G.ADAPTER):
        return str(node.meta[G.ADAPTER])
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    return str(list(stack.values())[-1][0]) if stack else ""


def _packed(name: str, t: torch.Tensor, owner: nn.Module) -> str:
    """`` (2 x 4-bit)`` after a layer's frozen codes packed into bytes (``bits`` < 8)."""
    bits = getattr(owner, "bits", 8)
    frozen = name.rsplit(".", 1)[-1] in getattr(type(owner), "frozen_tensors", ())
    if frozen and t.dtype == torch.uint8 and isinstance(bits, int) and bits < 8 and 8 % bits == 0:
        return f" ({8 // bits} x {bits}-bit)"
    return ""


def _module_op(node: fx.Node, module: nn.Module) -> tuple[str, list[str]]:
    """A called module's label and lines: its kind and shape, then each tensor it holds."""
    own = [(n, t, module) for n, t in module.named_parameters(recurse=False)]
    own += [(n, t, module) for n, t in module.named_buffers(recurse=False)]
    if isinstance(module, AdapterLayer):
        own += [(f"base.{n}", t, module.base) for n, t in module.base.named_buffers(recurse=False)]
    lines = [
        tensor_text(n, t) + _packed(n, t, owner)
        for n, t, owner in own
        if t is not None and t.numel()
    ]
    if isinstance(module, nn.Linear):
        return f"Linear [{module.in_features}->{module.out_features}]", lines
    if isinstance(module, Layer):
        info = module.describe()
        extra = ", ".join(
            f"{k} {info[k]}" for k in ("bits", "group_size", "rank") if info.get(k) is not None
        )
        return f"{type(module).__name__}" + (f" ({extra})" if extra else ""), lines
    return type(module).__name__, lines


def _function_label(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    name = getattr(target, "__name__", None) or str(target)
    if hasattr(target, "_schema"):  # torch.ops.ns.op.default -> op
        name = str(target).split(".")[-2] if str(target).count(".") >= 2 else str(target)
    return name


def _fx_shape_only(node: fx.Node, shapes: set[str]) -> bool:
    """Whether ``node`` computes a size from shapes (``x.shape[-1] // 16``) rather than data."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in ("shape", "ndim", "dtype", "device")
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    val = node.meta.get("val")
    if node.op != "placeholder" and isinstance(val, (int, torch.SymInt)):
        return True
    ins = node.all_input_nodes
    return (
        node.op == "call_function"
        and getattr(node.target, "__module__", "") in ("_operator", "operator")
        and bool(ins)
        and all(a.name in shapes for a in ins)
    )


def _fill_shapes(gm: fx.GraphModule) -> dict[str, Any]:
    """Each node's output value, for its shape: the traced ``meta["val"]``, else (a node a pass
    inserted) what its operator gives on meta tensors (no data: nothing of the model is read or
    written), or None where that fails."""
    vals: dict[str, Any] = {}
    metas: dict[str, Any] = {}
    for n in gm.graph.nodes:
        val = n.meta.get("val", n.meta.get("tensor_meta"))
        if val is None and n.op in ("call_function", "call_module", "call_method"):
            val = _meta_run(gm, n, metas)
        elif val is None and n.op == "get_attr":
            val = _attr(gm, str(n.target))
        vals[n.name], metas[n.name] = val, _meta(val)
    return vals


def _meta(value: Any) -> Any:
    """A data-less stand-in of a tensor (its shape and dtype on the meta device)."""
    if not isinstance(value, torch.Tensor) and not hasattr(value, "shape"):
        return value
    try:
        return torch.empty(tuple(int(d) for d in value.shape), dtype=value.dtype, device="meta")
    except (TypeError, ValueError, RuntimeError):  # symbolic sizes, or no dtype
        return None


def _meta_run(gm: fx.GraphModule, node: fx.Node, metas: dict) -> Any:
    def value(a):
        return metas.get(a.name) if isinstance(a, fx.Node) else a

    args = fx.node.map_aggregate(node.args, value)
    kwargs = fx.node.map_aggregate(node.kwargs, value)
    try:
        with torch.no_grad():
            if node.op == "call_module":
                module = gm.get_submodule(str(node.target))
                state = {
                    k: t.to("meta")
                    for k, t in [*module.named_parameters(), *module.named_buffers()]
                }
                return torch.func.functional_call(module, state, tuple(args), kwargs)
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            return node.target(*args, **kwargs)
    except Exception:  # a drawing goes without the shape, never without the page
        return None


def fx_ops(gm: fx.GraphModule) -> list[Op]:
    """An FX graph's nodes as ``Op``s: called modules with their tensors, ``get_attr`` tensors
    as adapter or base parts, functions with their literal arguments; each with its output's
    dtype and shape where known (``_fill_shapes``) and its layer (``fx_layer``)."""
    ops = []
    shapes: set[str] = set()
    vals = _fill_shapes(gm)
    for n in gm.graph.nodes:
        inputs = tuple(a.name for a in n.all_input_nodes)
        layer = fx_layer(n)
        if _fx_shape_only(n, shapes):
            shapes.add(n.name)
            ops.append(Op(n.name, _function_label(n), (), "op", inputs, layer, True))
            continue
        if n.op == "call_module":
            label, lines = _module_op(n, gm.get_submodule(str(n.target)))
            ops.append(Op(n.name, label, (*lines, _out(vals[n.name])), "op", inputs, layer))
        elif n.op == "get_attr":
            value = _attr(gm, str(n.target))
            trains = isinstance(value, nn.Parameter) and value.requires_grad
            role = "adapter" if trains or "lora" in str(n.target).lower() else "base"
            short = str(n.target).rsplit(".", 1)[-1]
            ops.append(Op(n.name, short, (tensor_text("", value),), role, inputs, layer))
        elif n.op in ("placeholder", "output"):
            ops.append(Op(n.name, n.op, (_out(vals[n.name]),), "io", inputs, layer))
        else:
            lines = (_literals(n), _out(vals[n.name]))
            ops.append(Op(n.name, _function_label(n), lines, "op", inputs, layer))
    return ops


def _literals(node: fx.Node, limit: int = 48) -> str:
    """The arguments that are not nodes (``scale=2.0, bits=4, group_size=32``; a view's shape),
    named by the operator's schema where it has one, cut to ``limit`` characters."""
    target = node.target
    schema = getattr(target, "_schema", None) or getattr(
        getattr(target, "default", None), "_schema", None
    )
    names = [a.name for a in schema.arguments] if schema is not None else []
    plain = []
    for i, a in enumerate(node.args):
        if isinstance(a, fx.Node) or (isinstance(a, (list, tuple)) and _has_node(a)):
            continue
        plain.append(f"{names[i]}={a!r}" if i < len(names) and schema is not None else repr(a))
    plain += [f"{k}={v!r}" for k, v in node.kwargs.items() if not isinstance(v, fx.Node)]
    text = ", ".join(plain)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_node(value: Any) -> bool:
    return any(isinstance(v, fx.Node) for v in value)


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, torch.Tensor) else None


# --- ONNX -----------------------------------------------------------------------------------


def onnx_layer(node: onnx.NodeProto, initializers: set[str]) -> str:
    """The module a node came from: its initializers' dotted names less the last part (our
    layers' tensors are named after the layer), else torch's recorded name scopes, else the
    path in a ``/``-separated node name."""
    owned = [i.rsplit(".", 1)[0] for i in node.input if i in initializers and "." in i]
    if owned:
        return owned[0]
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:  # ['', 'blocks.0', 'blocks.0.attn', 'blocks.0.attn.q_proj', 'add_33']
            parts = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            return ""
        return str(parts[-2]) if isinstance(parts, list) and len(parts) >= 2 else ""
    return node.name.rsplit("/", 1)[0].strip("/") if "/" in node.name else ""


def onnx_ops(model: onnx.ModelProto) -> list[Op]:
    """An ONNX graph's nodes as ``Op``s, keyed as the dumps key them (``node_key``): the
    operator, its initializers and outputs with their types, the node each input comes from
    (``input:<name>`` for a graph input) and its layer (``onnx_layer``)."""
    types = value_types(model)
    inits = {t.name for t in model.graph.initializer}
    producer = {o: node_key(n) for n in model.graph.node for o in n.output if o}
    ops = []
    for n in model.graph.node:
        key = node_key(n)
        lines = [
            f"{i.rsplit('.', 1)[-1]} {_onnx_type(types.get(i, '?'))}"
            for i in n.input
            if i in inits and i not in producer
        ]
        lines += [f"-> {_onnx_type(types[o])}" for o in n.output if o in types]
        inputs = tuple(producer.get(i, f"input:{i}") for i in n.input if i and i not in inits)
        shape_only = n.op_type in _SHAPE_OPS and all(
            types.get(o, "").startswith(("int64", "bool")) for o in n.output if o
        )
        ops.append(Op(key, n.op_type, tuple(lines), "op", inputs, onnx_layer(n, inits), shape_only))
    return ops


_SHAPE_OPS = {
    "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Constant", "ConstantOfShape",
    "Range", "Equal", "Where", "Expand", "Cast", "Add", "Sub", "Mul", "Div", "Size", "Reshape",
}  # fmt: skip


def _onnx_type(text: str) -> str:
    for long, short in (("float16", "f16"), ("float", "f32"), ("uint8", "u8"), ("int64", "i64")):
        if text.startswith(long + "["):
            return short + text[len(long) :]
    return text


__all__ = ["Op", "fx_layer", "fx_ops", "onnx_layer", "onnx_ops", "tensor_text"]
