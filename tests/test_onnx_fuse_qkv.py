"""ONNX pass fuse-qkv: the q, k, v projections of each GroupQueryAttention become one packed
projection, integer (with split corrections, present or not) or float; outputs unchanged."""

import numpy as np
import pytest
import torch
from onnx_graphs import ops, run
from transformers import LlamaConfig, LlamaForCausalLM

import lowrank_compiler as lrc
from lowrank_compiler.genai_attention import fused_attention
from lowrank_compiler.genai_config import io_names
from lowrank_compiler.genai_graph import gqa_call, gqa_dynamic_shapes
from lowrank_compiler.runtime.layers import IntLinear
from lowrank_compiler.runtime.onnx.attention import attention_translations
from lowrank_compiler.runtime.onnx.export import export_proto
from lowrank_compiler.runtime.onnx.fuse_qkv import fuse_qkv
from lowrank_compiler.runtime.onnx.passes import verify

LAYERS, CONTEXT = 2, 64


def llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=128,
        max_position_embeddings=CONTEXT,
        attention_bias=True,
    )
    return LlamaForCausalLM(config).eval()


def folded():
    model = lrc.compile(
        llama(),
        lrc.Policy(method="qalora", group_size=32, rank=4),
        example_inputs=(torch.randint(0, 128, (2, 8)),),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 0.05)
    out = lrc.fold(model)
    out.model.layers[0].self_attn.k_proj.correction = None  # a split fold without a correction here
    return out


def graph(model):
    names = io_names(LAYERS, False, positions=False)
    with torch.no_grad(), fused_attention(model, CONTEXT) as decoder:
        call = gqa_call(2, 3, 4, LAYERS, 2, 16, 128, torch.float32)
        proto = export_proto(
            decoder,
            call,
            dynamic_shapes=gqa_dynamic_shapes(LAYERS),
            input_names=names[0],
            output_names=names[1],
            translations=attention_translations(),
            stage=[],
        )
    run_call = gqa_call(
        1, 3, 4, LAYERS, 2, 16, 128, torch.float32
    )  # onnxruntime: batch 1 with a past
    return proto, [t.numpy() for t in run_call]


@pytest.mark.parametrize("build, projection", [(folded, "MatMulNBits"), (llama, "MatMul")])
def test_three_projections_become_one_and_the_outputs_stay(build, projection):
    proto, inputs = graph(build())
    before = run(proto, *inputs)
    count = ops(proto)[projection]
    result = fuse_qkv(proto)
    assert result.stats == {"fused": LAYERS}
    assert ops(result.model)[projection] == count - 2 * LAYERS
    gqa = [n for n in result.model.graph.node if n.op_type == "GroupQueryAttention"]
    assert all(list(n.input[1:3]) == ["", ""] for n in gqa)
    verify(result.model)
    for got, ref in zip(run(result.model, *inputs), before):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_projections_of_different_forms_stay_apart():
    model = folded()
    attn = model.model.layers[1].self_attn
    q = attn.q_proj  # float zero points beside integer ones: one MatMulNBits cannot hold both
    attn.q_proj = IntLinear(
        q.qweight, q.scales, q.zero_points(), bits=4, group_size=32, bias=q.bias
    )
    proto, inputs = graph(model)
    result = fuse_qkv(proto)
    assert result.stats == {"fused": 1}
    assert any("not fused (zero-point forms differ)" in line for line in result.report)
    for got, ref in zip(run(result.model, *inputs), run(proto, *inputs)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
