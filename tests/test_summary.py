from models import hf_llama, ids, tiny_gpt

import lowrank_compiler as lrc


def test_summary_data_counts_adapter_parameters_exactly():
    model = lrc.compile(tiny_gpt(), lrc.Policy(target=["q_proj", "up_proj"], rank=4, alpha=8))
    s = lrc.summary(model)
    rows = {r.name: r for r in s.layers}
    assert set(rows) == {
        "blocks.0.attn.q_proj",
        "blocks.1.attn.q_proj",
        "blocks.0.mlp.up_proj",
        "blocks.1.mlp.up_proj",
    }
    up = rows["blocks.0.mlp.up_proj"]
    assert (up.kind, up.in_features, up.out_features, up.rank, up.alpha, up.bits) == (
        "lora",
        32,
        128,
        4,
        8.0,
        32,
    )
    assert up.trainable == 4 * (32 + 128) and up.params == 32 * 128 + 128 + 4 * (32 + 128)
    expected = 2 * 4 * (32 + 32) + 2 * 4 * (32 + 128)
    assert s.trainable_params == expected and s.trainable_bytes == 4 * expected
    assert s.total_params == sum(p.numel() for p in model.parameters())
    assert s.tracer == "fx" and s.pipeline.startswith("find-linears{target=[q_proj,up_proj]}")
    assert len(s.untouched) == 9 and any(
        u.startswith("lm_head (32->96, not-targeted)") for u in s.untouched
    )
    assert any(u.startswith("blocks.0.attn.k_proj (32->32, not-targeted)") for u in s.untouched)
    d = s.to_dict()
    assert d["trainable_params"] == expected and d["layers"][0]["name"] == "blocks.0.attn.q_proj"


def test_summary_prints_a_table():
    model = lrc.compile(hf_llama(), lrc.Policy(rank=4), example_inputs=(ids(),))
    text = str(lrc.summary(model))
    lines = text.splitlines()
    assert lines[0] == "tracer: export"
    header = next(line for line in lines if line.startswith("layer"))
    for col in (
        "kind",
        "in",
        "out",
        "rank",
        "alpha",
        "bits",
        "group",
        "zeros",
        "trainable",
        "bytes",
    ):
        assert col in header
    assert any(
        line.startswith("model.layers.1.mlp.down_proj") and " lora " in line for line in lines
    )
    assert "14 layer(s) rewritten, 1 linear layer(s) untouched" in text
    assert "trainable: 4,096 of" in text


def test_summary_of_an_uncompiled_model_and_functional_ops():
    s = lrc.summary(tiny_gpt())
    assert s.layers == [] and s.tracer is None and s.trainable_params == s.total_params
    model = lrc.compile(tiny_gpt(tie_head=True), lrc.Policy(rank=2))
    assert any(
        u.startswith("wte (32->96, functional F.linear)") for u in lrc.summary(model).untouched
    )
