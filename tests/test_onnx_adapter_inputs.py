"""ONNX pass expose-adapter-inputs: MatMulNBits' integer zero points (and scales) become
overridable inputs; with nothing fed the file computes what it did, and a fed tensor is used."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx_graphs import exported, int_linear, ops, relative
from torch import nn

from lowrank_compiler.runtime.errors import ExportError
from lowrank_compiler.runtime.layers import IntLinear
from lowrank_compiler.runtime.onnx.adapter_inputs import (
    check_adapter_inputs,
    expose_adapter_inputs,
)
from lowrank_compiler.runtime.onnx.passes import verify
from lowrank_compiler.runtime.quant.group import pack_zeros


def graph():
    """Two integer-zero layers and one with float zero points (nothing an adapter changes)."""
    model = nn.Sequential(
        int_linear(n=32), nn.ReLU(), int_linear(32, 16, seed=1), int_linear(16, 8, seed=2)
    )
    model[3] = int_linear(16, 8, float_zeros=True, seed=2)
    x = torch.randn(3, 64)
    return model, x, exported(model, x)


def session(proto):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


@pytest.mark.parametrize("scales, exposed", [(False, 2), (True, 4)])
def test_integer_zero_points_become_overridable_and_nothing_else_changes(scales, exposed):
    model, x, proto = graph()
    plain = session(proto)
    before = plain.run(None, {plain.get_inputs()[0].name: x.numpy()})[0]
    nodes = ops(proto)
    result = expose_adapter_inputs(proto, scales=scales)
    assert result.modified and result.stats == {"exposed": exposed}
    assert ops(result.model) == nodes  # no node added, removed or rewritten
    verify(result.model)
    s = session(result.model)
    assert len(s.get_overridable_initializers()) == exposed
    (name,) = [i.name for i in s.get_inputs()]
    assert np.array_equal(s.run(None, {name: x.numpy()})[0], before)  # bit for bit
    again = expose_adapter_inputs(result.model, scales=scales)
    assert not again.modified


def test_a_fed_zero_point_is_the_one_used():
    model, x, proto = graph()
    proto = expose_adapter_inputs(proto).model
    s = session(proto)
    first = model[0]
    z = (first.zero_points() + 3).clamp(0, 15)  # another fine-tune's integer zero points
    moved = IntLinear(
        first.qweight,
        first.scales,
        pack_zeros(z.to(torch.uint8), 4),
        bits=4,
        group_size=16,
        bias=first.bias,
        in_features=64,
    )
    want = nn.Sequential(moved, *model[1:])(x).detach().numpy()
    zeros_name = s.get_overridable_initializers()[0].name
    (name,) = [i.name for i in s.get_inputs()]
    got = s.run(None, {name: x.numpy(), zeros_name: moved.zeros.numpy()})[0]
    assert relative(got, want) < 1e-5


def test_a_swappable_base_is_refused_where_onnxruntime_would_ignore_an_adapter():
    with pytest.raises(ExportError, match="accuracy_level 4"):
        check_adapter_inputs("zeros", 4, "matmulnbits")
    with pytest.raises(ExportError, match="format='matmulnbits'"):
        check_adapter_inputs("zeros", 0, "qdq")
    with pytest.raises(ExportError, match="must be one of"):
        check_adapter_inputs("scales", 0, "matmulnbits")
    check_adapter_inputs("zeros+scales", 0, "matmulnbits")
    check_adapter_inputs("none", 4, "matmulnbits")
