import pytest
import torch
from models import ids, tiny_gpt

import lowrank_compiler as lrc
from lowrank_compiler.runtime.layers.int_linear import IntLinear


def test_rtn_rewrites_every_target_and_stays_within_the_rounding_bound():
    model = tiny_gpt()
    ref = {
        n: m.weight.detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    lrc.compile(model, lrc.Policy(method="rtn", bits=4, group_size=16))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, IntLinear)}
    assert len(layers) == 12 and isinstance(model.lm_head, torch.nn.Linear)
    for name, m in layers.items():
        bound = m.scales.repeat_interleave(16, 1) / 2
        assert ((m.dequantize() - ref[name]).abs() <= bound * (1 + 1e-6) + 1e-7).all(), name
    assert not any(p.requires_grad for p in model.parameters())
    model(ids())  # runs


def test_quantized_base_is_at_most_a_fifth_of_the_fp32_bytes():
    model = tiny_gpt()
    fp32 = {
        n: m.weight.numel() * 4 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    lrc.compile(model, lrc.Policy(method="rtn", bits=4, group_size=32))
    rows = [r for r in lrc.summary(model).layers]
    for r in rows:
        weight_bytes = r.bytes - 4 * r.out_features  # the fp32 bias stays
        assert weight_bytes <= 0.2 * fp32[r.name], (r.name, weight_bytes / fp32[r.name])


def test_a_width_the_group_does_not_divide_gets_a_partial_last_group():
    model = tiny_gpt()  # in-widths 32 (attention, up) and 128 (down)
    x = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        ref = model(x)
    lrc.compile(model, lrc.Policy(method="rtn", group_size=64))
    q, down = model.blocks[0].attn.q_proj, model.blocks[0].mlp.down_proj
    assert (q.in_features, q.qweight.shape[1], q.scales.shape) == (
        32,
        1,
        (32, 1),
    )  # one group of 32
    assert (down.in_features, down.qweight.shape[1]) == (128, 2)
    w = torch.nn.Linear(40, 8).weight.detach()  # 40 = 32 + 8
    layer = IntLinear.from_weight(w, None, bits=4, group_size=32)
    assert layer.scales.shape == (8, 2) and layer.in_features == 40
    step = layer.scales.repeat_interleave(32, 1)[:, :40]  # each weight's own group's step
    assert ((layer.dequantize() - w).abs() <= step / 2 + 1e-6).all()
    with torch.no_grad():
        assert (model(x) - ref).abs().max() < 0.5 * ref.abs().max()


def test_nan_weight_names_the_layer():
    model = tiny_gpt()
    with torch.no_grad():
        model.blocks[1].attn.v_proj.weight[0, 0] = float("nan")
    with pytest.raises(
        lrc.PolicyError,
        match=r"blocks.1.attn.v_proj: weight has 1 NaN/inf value\(s\) \(shape \[32, 32\]\)",
    ):
        lrc.compile(model, lrc.Policy(method="rtn"))


def test_override_bits_per_layer_and_dump(tmp_path):
    model = lrc.compile(
        tiny_gpt(), lrc.Policy(method="rtn", overrides={"mlp.*": {"bits": 8}}), dump_dir=tmp_path
    )
    assert model.blocks[0].mlp.up_proj.bits == 8 and model.blocks[0].attn.q_proj.bits == 4
    dump = (tmp_path / "02-quantize.txt").read_text()
    assert "blocks.0.mlp.up_proj: Linear -> IntLinear(int8, group 32, RTN)" in dump
    assert "call_module[target=blocks.0.mlp.up_proj]" in dump  # IntLinear stays one node
