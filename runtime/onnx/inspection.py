"""``inspect_onnx(path)``: what an exported file holds, and whether it is pure integer.

Reads the graph (not the weights' bytes, when they live in external data): op
histogram, initializer bytes by dtype, and for each linear layer of the source model how
it was lowered, found from the graph itself (``MatMulNBits`` or ``DequantizeLinear``
nodes fed by ``<layer>.qweight*`` initializers) and from the export's metadata (the
zero-point form, adapters). ``is_pure_int4`` holds when every
targeted layer is an integer node of 4 bits and none carries a float adapter.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
from onnx import helper

from ..quant.formats import METADATA_KEY
from .file import read_model


@dataclass(frozen=True)
class OnnxReport:
    path: str
    ops: dict[str, int]
    initializer_bytes: dict[str, int]
    layers: dict[str, str]  # layer -> lowering found in the graph
    targets: list[str]
    format: str | None
    accuracy_level: int | None
    is_pure_int4: bool
    problems: list[str] = field(default_factory=list)  # why it is not pure

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"{self.path}: format {self.format}, accuracy_level {self.accuracy_level}, "
            f"pure int4: {'yes' if self.is_pure_int4 else 'no'}"
        ]
        lines.append(
            "ops: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items(), key=lambda kv: -kv[1]))
        )
        lines.append(
            "initializer bytes: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(self.initializer_bytes.items()))
        )
        width = max((len(n) for n in self.layers), default=5)
        for name, how in self.layers.items():
            mark = "*" if name in self.targets else " "
            lines.append(f"  {mark} {name.ljust(width)}  {how}")
        lines += [f"  not pure: {p}" for p in self.problems]
        return "\n".join(lines)


def _nbytes(t: onnx.TensorProto) -> int:
    for entry in t.external_data:
        if entry.key == "length":
            return int(entry.value)
    if t.raw_data:
        return len(t.raw_data)
    size = 1
    for d in t.dims:
        size *= d
    bits = {onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT4: 4}.get(t.data_type)
    if bits:
        return (size + 1) // 2
    return size * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _layer_of(name: str) -> str:
    for suffix in (".qweight_kn", ".qweight"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            return name[: -len(".base")] if name.endswith(".base") else name
    return name


def inspect_onnx(path: str | os.PathLike) -> OnnxReport:
    model = read_model(path)
    graph = model.graph
    meta = next((json.loads(p.value) for p in model.metadata_props if p.key == METADATA_KEY), {})
    ops = Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in graph.node
    )
    inits = {i.name: i for i in graph.initializer}
    by_dtype: Counter = Counter()
    for t in graph.initializer:
        by_dtype[onnx.TensorProto.DataType.Name(t.data_type).lower()] += _nbytes(t)
    found: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            layer = _layer_of(node.input[1])
            z = node.input[3] if len(node.input) > 3 and node.input[3] else ""
            zeros = (
                "none"
                if not z
                else (
                    "int"
                    if inits.get(z) is not None and inits[z].data_type == onnx.TensorProto.UINT8
                    else "float"
                )
            )
            found[layer] = f"MatMulNBits int{attrs['bits']} g{attrs['block_size']} zeros={zeros}"
        elif node.op_type == "DequantizeLinear" and node.input[0].endswith(".qweight_kn"):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            bits = 4 if inits[node.input[0]].data_type == onnx.TensorProto.UINT4 else 8
            found[_layer_of(node.input[0])] = (
                f"DequantizeLinear+MatMul int{bits} g{attrs.get('block_size')} zeros=int"
            )
    described = meta.get("layers", {})
    # the export's own record names the zero-point form (the optimizer may rename or merge the
    # correction initializers); the graph proves each integer node is there
    layers = {
        name: described.get(name, found.get(name, "float MatMul"))
        if name in found
        else described.get(name, "float MatMul")
        for name in dict.fromkeys([*described, *found])
    }
    targets = list(meta.get("targets", found))
    problems = []
    for name in targets:
        how = layers.get(name, "missing")
        if name not in found:
            problems.append(f"{name}: no integer node ({how})")
        elif "int4" not in found[name]:
            problems.append(f"{name}: {found[name]}")
        if "adapter" in described.get(name, ""):
            problems.append(f"{name}: carries a float adapter (fold the model before export)")
    return OnnxReport(
        str(path),
        dict(ops),
        dict(by_dtype),
        layers,
        targets,
        meta.get("format"),
        meta.get("accuracy_level"),
        bool(targets) and not problems,
        problems,
    )


def _type_str(value_info) -> str:
    t = value_info.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else "?"
    dims = [
        d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in t.shape.dim
    ]
    return f"{dtype}[{', '.join(dims)}]" if t.HasField("shape") else dtype


def op_listing(path: str | os.PathLike) -> list[str]:
    """One line per node of the file at ``path`` (``model_lines``)."""
    return model_lines(read_model(path))


def value_types(model: onnx.ModelProto) -> dict[str, str]:
    """Each graph input, output, value and initializer -> ``dtype[shape]`` as far as known."""
    g = model.graph
    types = {v.name: _type_str(v) for v in [*g.input, *g.value_info, *g.output]}
    for t in g.initializer:
        types[t.name] = (
            f"{onnx.TensorProto.DataType.Name(t.data_type).lower()}[{', '.join(map(str, t.dims))}]"
        )
    return types


def model_lines(model: onnx.ModelProto) -> list[str]:
    """One line per node: ``op(inputs: dtype[shape]) -> outputs``, shapes from ONNX shape
    inference (the graph's inputs first, its outputs last)."""
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a listing without shapes still helps
        pass
    g = model.graph
    types = value_types(model)
    lines = [f"input {v.name}: {types[v.name]}" for v in g.input]
    for n in g.node:
        op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        ins = ", ".join(f"{i}: {types.get(i, '?')}" if i else "-" for i in n.input)
        outs = ", ".join(f"{o}: {types.get(o, '?')}" for o in n.output)
        lines.append(f"{op}({ins}) -> {outs}")
    lines += [f"output {v.name}: {types[v.name]}" for v in g.output]
    return lines
