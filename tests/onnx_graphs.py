"""Small ONNX graphs for the ONNX passes' tests, built from our own layers by the exporter."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import lowrank_compiler as lrc
from lowrank_compiler.runtime.layers import IntLinear
from lowrank_compiler.runtime.onnx.export import export_proto


def int_linear(
    k: int = 64, n: int = 24, *, bits: int = 4, group: int = 16, float_zeros=False, seed: int = 0
) -> IntLinear:
    """An ``IntLinear`` of random weights; ``float_zeros``: its zero points moved off the integers
    by up to half a step (what a QA-LoRA fold with ``zeros="float"`` stores)."""
    g = torch.Generator().manual_seed(seed)
    layer = IntLinear.from_weight(
        torch.randn(n, k, generator=g), torch.randn(n, generator=g), bits=bits, group_size=group
    )
    if float_zeros:
        z = layer.zero_points() + (torch.rand(layer.scales.shape, generator=g) - 0.5)
        layer = IntLinear(
            layer.qweight, layer.scales, z, bits=bits, group_size=group, bias=layer.bias
        )
    return layer


def exported(model: nn.Module, x: torch.Tensor, fmt: str = "matmulnbits") -> onnx.ModelProto:
    """``model(x)`` as torch.onnx gives it after the export's own ONNX stage for ``fmt``."""
    shapes = ({0: torch.export.Dim("batch")},)
    return export_proto(model, (x,), fmt=fmt, dynamic_shapes=shapes)


def run(model: onnx.ModelProto, *inputs: np.ndarray) -> list[np.ndarray]:
    """onnxruntime's outputs at fp32 compute (a fused QDQ graph would run int8 activations)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


def ops(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in model.graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return out


def relative(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


__all__ = ["exported", "int_linear", "lrc", "ops", "relative", "run"]
