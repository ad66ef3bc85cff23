import pytest
import torch
from models import hf_gpt2, ids, output, tiny_gpt
from torch import nn

from lowrank_compiler import PassInputError, PassManager, lint, trace
from lowrank_compiler.runtime import LoRALinear


def rewrite(model, pipeline, x=None):
    return PassManager(pipeline).run(trace(model, x))


def test_rewrite_count_shapes_and_initial_values():
    model = tiny_gpt()
    bases = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    x = ids()
    ref = model(x)
    pm = PassManager("find-linears,insert-lora{rank=4,alpha=8.0}")
    gm = pm.run(trace(model))
    assert pm.results[-1][1].stats["rewritten"] == 12
    layer = model.blocks[0].mlp.up_proj
    assert isinstance(layer, LoRALinear)
    assert (
        layer.base is bases["blocks.0.mlp.up_proj"]
        and layer.base.bias is bases["blocks.0.mlp.up_proj"].bias
    )
    assert layer.lora_A.shape == (4, 32) and layer.lora_B.shape == (
        128,
        4,
    )  # A: [r, in], B: [out, r]
    assert (
        layer.scale == 2.0
        and torch.count_nonzero(layer.lora_B) == 0
        and layer.lora_A.abs().sum() > 0
    )
    assert not isinstance(model.lm_head, LoRALinear)
    assert torch.equal(model(x), ref) and torch.equal(gm(x), ref)  # B = 0: bit-identical
    lint(gm)


def test_adapter_math_matches_the_formula():
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    layer = LoRALinear.from_linear(base, rank=4, alpha=12.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 5, 16)
    expect = base(x) + 3.0 * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expect, rtol=1e-6, atol=1e-6)


def test_graph_shows_the_adapter_ops_and_stays_equal_to_the_model():
    model = tiny_gpt()
    gm = rewrite(model, "find-linears{target=[v_proj]},insert-lora{rank=2}")
    ops = [
        (n.op, str(n.target))
        for n in gm.graph.nodes
        if n.meta.get("lowrank_compiler.adapter") == "blocks.1.attn.v_proj"
    ]
    assert ("call_module", "blocks.1.attn.v_proj.base") in ops
    assert ("get_attr", "blocks.1.attn.v_proj.lora_A") in ops and (
        "get_attr",
        "blocks.1.attn.v_proj.lora_B",
    ) in ops
    assert sum(op == "call_function" for op, _ in ops) == 4  # linear, linear, mul, add
    with torch.no_grad():
        model.blocks[1].attn.v_proj.lora_B.normal_()
    x = ids()
    assert torch.equal(gm(x), model(x))


def test_conv1d_base_is_wrapped_and_exact():
    model = hf_gpt2()
    x = ids()
    ref = output(model, x)
    rewrite(model, "find-linears,insert-lora{rank=4}", (x,))
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, LoRALinear) and type(layer.base).__name__ == "Conv1D"
    assert layer.lora_A.shape == (4, 32) and layer.lora_B.shape == (96, 4)
    assert torch.equal(output(model, x), ref)


def test_dropout_sits_on_the_adapter_input_only():
    model = tiny_gpt()
    rewrite(model, "find-linears{target=[q_proj]},insert-lora{rank=2,dropout=0.5}")
    layer = model.blocks[0].attn.q_proj
    assert isinstance(layer.dropout, nn.Dropout) and layer.dropout.p == 0.5
    layer.train()
    x = torch.randn(4, 32)
    torch.testing.assert_close(
        layer(x), layer.base(x)
    )  # B = 0: dropout cannot reach the output yet


def test_overrides_set_rank_and_alpha_per_layer():
    model = tiny_gpt()
    rewrite(
        model,
        'find-linears,insert-lora{rank=8,overrides={q_proj={rank=2},"re:.*mlp.*"={alpha=4.0}}}',
    )
    assert model.blocks[0].attn.q_proj.rank == 2 and model.blocks[0].attn.k_proj.rank == 8
    assert model.blocks[1].mlp.up_proj.alpha == 4.0 and model.blocks[1].mlp.up_proj.scale == 0.5


def test_rank_above_min_in_out_names_layer_shape_and_fix():
    model = tiny_gpt()
    before = dict(model.named_modules())
    with pytest.raises(PassInputError) as e:
        rewrite(model, "find-linears,insert-lora{rank=33}")
    msg = str(e.value)
    assert "rank=33 for layer 'blocks.0.attn.q_proj' (in=32, out=32) exceeds min(in, out)=32" in msg
    assert "insert-lora" in msg and "after find-linears" in msg
    assert dict(model.named_modules()) == before  # checked before any swap


@pytest.mark.parametrize(
    "option, message",
    [
        ("rank=0", "rank for layer .* must be a positive integer"),
        ("alpha=-1.0", "alpha for layer .* must be a positive finite number"),
        ("dropout=1.5", r"dropout must be a number in \[0, 1\)"),
        ("overrides={nothing={rank=2}}", "override pattern 'nothing' matches no targeted layer"),
        ("overrides={q_proj={dropout=2}}", "unknown field"),
    ],
)
def test_bad_options(option, message):
    with pytest.raises(PassInputError, match=message):
        rewrite(tiny_gpt(), f"find-linears,insert-lora{{{option}}}")


def test_insert_without_find_is_an_error():
    with pytest.raises(PassInputError, match="run find-linears before insert-lora"):
        rewrite(tiny_gpt(), "insert-lora")
