"""ONNX pass fuse-skip-norm: residual Add + SimplifiedLayerNormalization -> one fused node."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import ops, run

from lowrank_compiler.runtime.onnx.attention import register_simplified_layernorm_schema
from lowrank_compiler.runtime.onnx.passes import verify
from lowrank_compiler.runtime.onnx.skip_norm import fuse_skip_norm


def residual_block(bias_add: bool = False) -> onnx.ModelProto:
    """out = norm(a + b) + (a + b), and norm(a + bias) where ``bias_add`` (not a residual)."""
    register_simplified_layernorm_schema()
    d = 8
    x = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", "S", d])  # noqa: E731
    gamma = numpy_helper.from_array(np.linspace(0.5, 1.5, d, dtype=np.float32), "gamma")
    bias = numpy_helper.from_array(np.full(d, 0.25, np.float32), "bias")
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"], name="residual"),
        helper.make_node(
            "SimplifiedLayerNormalization",
            ["s", "gamma"],
            ["y"],
            name="norm",
            epsilon=1e-5,
            axis=-1,
            stash_type=1,
        ),
        helper.make_node("Add", ["y", "s"], ["out"], name="next_residual"),
    ]
    outputs = [x("out")]
    if bias_add:
        nodes += [
            helper.make_node("Add", ["a", "bias"], ["t"], name="bias_add"),
            helper.make_node(
                "SimplifiedLayerNormalization",
                ["t", "gamma"],
                ["u"],
                name="norm2",
                epsilon=1e-5,
                axis=-1,
                stash_type=1,
            ),
        ]
        outputs.append(x("u"))
    graph = helper.make_graph(nodes, "block", [x("a"), x("b")], outputs, [gamma, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return onnx.shape_inference.infer_shapes(model)


def test_the_residual_norm_is_fused_and_the_sum_still_feeds_the_next_residual():
    proto = residual_block()
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 8), np.float32), rng.standard_normal((2, 3, 8), np.float32)
    ref = run(proto, a, b)
    result = fuse_skip_norm(proto)
    assert result.modified and result.stats == {"fused": 1, "norms": 1}
    assert ops(result.model) == {"SkipSimplifiedLayerNormalization": 1, "Add": 1}
    verify(result.model)
    np.testing.assert_allclose(run(result.model, a, b)[0], ref[0], rtol=1e-6, atol=1e-6)


def test_a_bias_add_is_not_a_residual():
    result = fuse_skip_norm(residual_block(bias_add=True))
    assert result.stats == {"fused": 1, "norms": 2}
    assert ops(result.model)["SimplifiedLayerNormalization"] == 1  # norm2 after the bias add stays
