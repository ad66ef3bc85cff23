import pytest
import torch
from models import NoLinear, hf_gpt2, hf_llama, ids, tiny_gpt

from lowrank_compiler import PassManager, TargetError, trace
from lowrank_compiler.passes.find_linears import find_linears


def run(model, x=None, **options):
    gm = trace(model, x)
    before = str(gm.graph)
    result = find_linears(gm, **options)
    assert not result.modified and str(result.gm.graph) == before  # analysis only
    return result


def selected(result):
    return [op.name for op in result.gm.meta["lowrank_compiler.linears"] if op.status == "selected"]


def test_all_linear_selects_everything_but_the_head():
    r = run(tiny_gpt())
    assert (
        r.stats["linear_layers"] == 13 and r.stats["selected"] == 12 and r.stats["output-head"] == 1
    )
    assert "lm_head" not in selected(r)
    assert r.stats["not_in_graph"] == []


def test_hf_head_found_through_get_output_embeddings():
    r = run(hf_llama(), (ids(),))
    assert r.stats["selected"] == 14
    ops = {op.name: op for op in r.gm.meta["lowrank_compiler.linears"]}
    assert ops["lm_head"].status == "output-head"
    assert ops["model.layers.0.self_attn.k_proj"].out_features == 16


def test_conv1d_kind_and_shape():
    r = run(hf_gpt2(), (ids(),))
    op = next(
        o for o in r.gm.meta["lowrank_compiler.linears"] if o.name == "transformer.h.0.attn.c_attn"
    )
    assert (op.kind, op.in_features, op.out_features) == ("conv1d", 32, 96)
    assert r.stats["kinds"] == {"conv1d": 8, "linear": 1}


@pytest.mark.parametrize(
    "target, exclude, expect",
    [
        (["q_proj"], [], ["blocks.0.attn.q_proj", "blocks.1.attn.q_proj"]),
        (
            ["attn.q_proj", "v_proj"],
            [],
            [
                "blocks.0.attn.q_proj",
                "blocks.0.attn.v_proj",
                "blocks.1.attn.q_proj",
                "blocks.1.attn.v_proj",
            ],
        ),
        (
            ["blocks.*.mlp.*"],
            ["blocks.1.mlp.down_proj"],
            ["blocks.0.mlp.up_proj", "blocks.0.mlp.down_proj", "blocks.1.mlp.up_proj"],
        ),
        (
            ["re:blocks\\.1\\..*_proj"],
            ["re:.*attn.*"],
            ["blocks.1.mlp.up_proj", "blocks.1.mlp.down_proj"],
        ),
        (["lm_head"], [], ["lm_head"]),
        (["all-linear", "lm_head"], ["mlp.up_proj"], None),
    ],
)
def test_patterns(target, exclude, expect):
    r = run(tiny_gpt(), target=target, exclude=exclude)
    if expect is None:  # all-linear plus the head explicitly, minus up_proj
        assert "lm_head" in selected(r) and len(selected(r)) == 11
    else:
        assert sorted(selected(r)) == sorted(expect)


def test_no_match_lists_the_models_linear_layers():
    with pytest.raises(TargetError) as e:
        run(tiny_gpt(), target=["query"])
    assert "matches none of the model's 13 linear layers" in str(e.value)
    assert "blocks.0.attn.q_proj" in str(e.value) and "lm_head" in str(e.value)


def test_a_pattern_matching_nothing_beside_others_is_named():
    with pytest.raises(TargetError, match=r"\['qproj'\] match no linear layer while the others do"):
        run(tiny_gpt(), target=["v_proj", "qproj"])


def test_exclude_matching_nothing_is_an_error():
    with pytest.raises(TargetError, match="exclude pattern 'head' matches no linear layer"):
        run(tiny_gpt(), exclude=["head"])


def test_exclude_everything_is_an_error():
    with pytest.raises(TargetError, match="leaves no linear layer selected"):
        run(tiny_gpt(), target=["q_proj"], exclude=["q_proj"])


def test_no_linear_layers():
    with pytest.raises(TargetError, match="has no linear layers"):
        run(NoLinear())


def test_functional_linear_is_found_reported_and_never_rewritten():
    model = tiny_gpt(tie_head=True)
    r = run(model)
    ops = {op.name: op for op in r.gm.meta["lowrank_compiler.linears"]}
    assert ops["wte"].kind == "functional" and ops["wte"].status == "functional"
    assert (ops["wte"].in_features, ops["wte"].out_features) == (32, 96)
    with pytest.raises(TargetError, match="functional F.linear calls on raw parameters.*exclude"):
        run(tiny_gpt(tie_head=True), target=["wte", "q_proj"])


def test_shared_layer_called_twice_is_one_layer_with_two_calls():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.fc(x))

    r = run(Twice())
    assert r.stats["linear_layers"] == 1 and r.stats["linear_calls"] == 2
    gm = PassManager("find-linears,insert-lora{rank=2}").run(trace(Twice()))
    assert sum(1 for n in gm.graph.nodes if n.op == "get_attr" and n.target == "fc.lora_A") == 2
