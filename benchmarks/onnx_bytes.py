"""Bytes and weight counts of the linear layers in an ONNX file, read from its initializers.

A linear layer's weight is whatever its kernel reads: an fp32 matrix fed to ``MatMul``
or ``Gemm``; ``MatMulNBits``' codes, scales and zero points; a QDQ graph's INT4 codes,
scales and zero points; and a ``split`` layer's correction (bytes, no extra weights).
Biases are left out. Bits per weight = bytes x 8 / weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import TensorProto


def tensor_bytes(t: TensorProto) -> int:
    for entry in t.external_data:
        if entry.key == "length":
            return int(entry.value)
    if t.raw_data:
        return len(t.raw_data)
    return onnx.numpy_helper.to_array(t).nbytes


def _count(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def linear_weights(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes, weights) of every linear layer's weight in the file at ``path``."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    nbytes = weights = 0
    counted: set[str] = set()

    def take(name: str, is_weight: bool) -> None:
        nonlocal nbytes, weights
        t = inits.get(name)
        if t is None or name in counted:
            return
        counted.add(name)
        nbytes += tensor_bytes(t)
        if is_weight:
            weights += _count(t.dims)

    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            for name in node.input[1:4]:  # B, scales, zero_points
                take(name, False)
            if node.input[1] in inits:
                weights += attrs["K"] * attrs["N"]
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            take(node.input[0], True)
            for name in node.input[1:3]:
                take(name, False)
        elif node.op_type in ("MatMul", "Gemm"):
            name = node.input[1]
            t = inits.get(name)
            if t is not None and len(t.dims) == 2:
                take(name, not name.endswith(".correction"))
    return nbytes, weights


def file_bytes(path: str | os.PathLike) -> int:
    """The file and its external data, if any."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def per_token_bytes(path: str | os.PathLike) -> int:
    """Initializer bytes one decoding step reads: every initializer, except that a table only
    gathered from (an embedding, GroupQueryAttention's rotary cos / sin caches: inputs 7, 8)
    counts one row, the row a token reads."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    gathered: dict[str, bool] = {}  # name -> read one row only (so far)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in inits:
                row = (node.op_type == "Gather" and i == 0) or (
                    node.op_type == "GroupQueryAttention" and i in (7, 8)
                )
                gathered[name] = gathered.get(name, True) and row
    total = 0
    for name, t in inits.items():
        nbytes = tensor_bytes(t)
        total += nbytes // t.dims[0] if gathered.get(name) and t.dims else nbytes
    return total
