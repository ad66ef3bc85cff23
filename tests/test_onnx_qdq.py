"""ONNX pass lower-to-qdq: MatMulNBits -> DequantizeLinear(axis=0, block_size=g) + MatMul."""

import onnx
import pytest
import torch
from onnx_graphs import int_linear, ops, relative, run
from torch import nn

from lowrank_compiler.runtime.onnx.export import export_proto
from lowrank_compiler.runtime.onnx.passes import verify
from lowrank_compiler.runtime.onnx.qdq import lower_to_qdq


@pytest.mark.parametrize("bits, kind", [(4, onnx.TensorProto.UINT4), (8, onnx.TensorProto.UINT8)])
def test_each_node_lowers_to_standard_onnx_with_the_same_codes(bits, kind):
    model = nn.Sequential(
        int_linear(n=32, bits=bits), nn.ReLU(), int_linear(32, 8, bits=bits, seed=1)
    )
    proto = export_proto(
        model, (torch.randn(2, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    result = lower_to_qdq(proto)
    assert result.modified and result.stats == {"lowered": 2}
    assert ops(result.model) == {"DequantizeLinear": 2, "MatMul": 2, "Add": 2, "Relu": 1}
    assert not any(o.domain == "com.microsoft" for o in result.model.opset_import)
    verify(result.model)
    codes = [i for i in result.model.graph.initializer if i.name.endswith(".qweight_kn")]
    assert [list(c.dims) for c in codes] == [[64, 32], [32, 8]] and {
        c.data_type for c in codes
    } == {kind}
    x = torch.randn(5, 64)
    assert relative(run(result.model, x.numpy())[0], model(x).double().numpy()) < 2e-6


def test_a_graph_without_matmulnbits_is_unchanged():
    proto = export_proto(
        nn.Sequential(nn.Linear(8, 4)),
        (torch.randn(2, 8),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    before = proto.SerializeToString()
    result = lower_to_qdq(proto)
    assert not result.modified and result.model.SerializeToString() == before
