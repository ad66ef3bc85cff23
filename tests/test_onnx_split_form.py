"""ONNX pass split-form: float zero points -> packed integer zero points + the exact correction."""

import onnx
import pytest
import torch
from onnx_graphs import int_linear, ops, relative, run
from torch import nn

from lowrank_compiler.runtime.onnx.export import export_proto
from lowrank_compiler.runtime.onnx.passes import verify
from lowrank_compiler.runtime.onnx.split_form import split_form


def float_zero_graph(bits=4, **kw):
    model = nn.Sequential(
        int_linear(n=32, bits=bits, float_zeros=True, **kw),
        nn.ReLU(),
        int_linear(32, 8, bits=bits, float_zeros=True, seed=1),
    )
    x = torch.randn(3, 5, 64)
    shapes = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},)
    proto = export_proto(model, (x,), dynamic_shapes=shapes)  # matmulnbits keeps 4-bit float zeros
    return model, proto


@pytest.mark.parametrize("bits", [4, 8])
def test_every_float_zero_node_is_split_exactly(bits):
    model, proto = float_zero_graph(bits)
    if bits == 8:  # the export itself splits 8-bit float zeros (onnxruntime refuses them)
        assert ops(proto)["ReduceSum"] == 2
        return
    assert ops(proto) == {"MatMulNBits": 2, "Relu": 1}
    result = split_form(proto, format="qdq")
    assert result.modified and result.stats == {"split": 2, "corrected": 2, "kept_float": 0}
    assert ops(result.model) == {
        "MatMulNBits": 2,
        "Relu": 1,
        "Reshape": 2,
        "ReduceSum": 2,
        "MatMul": 2,
        "Add": 2,
    }
    verify(result.model)
    zeros = {i.name: i for i in result.model.graph.initializer}
    for node in result.model.graph.node:
        if node.op_type == "MatMulNBits":
            assert zeros[node.input[3]].data_type == onnx.TensorProto.UINT8
    for shape in ((1, 1, 64), (4, 9, 64)):  # shapes the export did not see
        x = torch.randn(*shape)
        ref = model(x).double().numpy()
        assert relative(run(result.model, x.numpy())[0], ref) < 2e-6


def test_a_format_that_takes_float_zeros_keeps_them():
    _, proto = float_zero_graph()
    result = split_form(proto, format="matmulnbits")
    assert (
        not result.modified
        and result.stats["kept_float"] == 2
        and ops(result.model)["MatMulNBits"] == 2
    )


def test_integer_valued_float_zeros_get_no_correction():
    layer = int_linear()
    as_floats = type(layer)(
        layer.qweight, layer.scales, layer.zero_points(), bits=4, group_size=16, bias=layer.bias
    )
    proto = export_proto(
        nn.Sequential(as_floats),
        (torch.randn(2, 64),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    result = split_form(proto, format="qdq")
    assert result.stats == {"split": 1, "corrected": 0, "kept_float": 0}
    assert ops(result.model) == {"MatMulNBits": 1}
    x = torch.randn(3, 64)
    ref = run(proto, x.numpy())[0]  # float zero points take another kernel: close, not equal bits
    assert relative(run(result.model, x.numpy())[0], ref) < 1e-6


def test_nothing_to_split_leaves_the_model_as_it_is():
    proto = export_proto(
        nn.Sequential(int_linear()),
        (torch.randn(2, 64),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    result = split_form(proto, format="qdq")
    assert not result.modified and result.model is proto
