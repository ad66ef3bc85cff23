"""The float type of an exported file, whatever the model trained in.

A model loaded in bfloat16 or float16 (with float32 adapters) exports in ``"float32"`` by default:
every float parameter and buffer is cast for the length of the export and the very tensors are
put back after, so the model is unchanged. bfloat16 and float16 values are float32 values, so a
bfloat16 model's float32 file computes what the model computes in float32, and the integer
weights' float32 scales stay as they are. ``"float16"`` casts to half precision instead (scales
included: ``MatMulNBits`` takes its scales in the activations' type), a smaller file whose
outputs are the model's in float16 arithmetic, not bit-exact.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import ExportError
from ..quant.formats import EXPORT_NODES

EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def export_dtype(value, fmt: str = "matmulnbits") -> torch.dtype:
    """The dtype a file in ``fmt`` is written in, by name; refused where onnxruntime has no
    kernel (bfloat16: neither ``MatMulNBits`` nor ``DequantizeLinear``, nor ``Mul``, has one on the
    CPU, which refuses to load such a file: measured with onnxruntime 1.32)."""
    if value == "bfloat16":
        node = EXPORT_NODES.get(fmt, "MatMulNBits").split("+")[0]
        raise ExportError(
            f"dtype='bfloat16': onnxruntime's CPU provider has no bfloat16 kernel for {node} "
            f"(format={fmt!r}; nor for plain ops such as Mul) and would refuse the file; use "
            "dtype='float32' (what a bfloat16 model computes, exactly) or dtype='float16'"
        )
    if value not in EXPORT_DTYPES:
        raise ExportError(f"dtype must be one of {tuple(EXPORT_DTYPES)}, got {value!r}")
    return EXPORT_DTYPES[value]


def cast_inputs(value, dtype: torch.dtype):
    """``value`` (a tensor, or tuples / lists / dicts of them) with float tensors in ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(cast_inputs(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: cast_inputs(v, dtype) for k, v in value.items()}
    return value


@contextlib.contextmanager
def floats_as(model: nn.Module, dtype: torch.dtype):
    """Every float parameter and buffer of ``model`` in ``dtype`` inside the block; the original
    tensors back after. Tied tensors stay tied (each tensor is cast once)."""
    originals = {}  # parameter -> its data before the cast (a tied parameter is one object)
    buffers, cast = [], {}  # (module, name, original); id(original) -> its cast
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None and p.is_floating_point() and p.dtype != dtype and p not in originals:
                originals[p] = p.data
                p.data = p.data.to(dtype)
        for name, b in module._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                buffers.append((module, name, b))
                module._buffers[name] = cast.setdefault(id(b), b.to(dtype))
    try:
        yield model
    finally:
        for p, data in originals.items():
            p.data = data
        for module, name, b in buffers:
            module._buffers[name] = b
