import pytest
import torch
from models import hf_llama, ids, output, tiny_gpt, train

import lowrank_compiler as lrc
from lowrank_compiler.runtime.layers.int_linear import IntLinear
from lowrank_compiler.runtime.layers.qalora import QALoRALinear


def test_starts_equal_to_the_rtn_model_and_counts_parameters():
    x = ids()
    rtn = lrc.compile(tiny_gpt(), lrc.Policy(method="rtn", group_size=16))
    model = lrc.compile(tiny_gpt(), lrc.Policy(method="qalora", group_size=16, rank=4, alpha=8))
    assert torch.equal(model(x), rtn(x))  # B = 0: exactly the quantized model
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QALoRALinear)}
    assert len(layers) == 12
    for name, m in layers.items():
        assert m.lora_A.shape == (4, m.in_features // 16) and m.lora_B.shape == (m.out_features, 4)
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        assert trainable == 4 * (m.in_features // 16 + m.out_features)  # r (in/g + out)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{n}.lora_{ab}" for n in layers for ab in "AB"
    }


def test_pool_is_the_group_mean_and_the_formula_holds():
    torch.manual_seed(0)
    base = IntLinear.from_float(torch.nn.Linear(64, 8), bits=4, group_size=16)
    layer = QALoRALinear.from_int_linear(base, rank=2, alpha=6.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 64)
    pooled = x.reshape(5, 4, 16).mean(-1)
    torch.testing.assert_close(layer.pool(x), pooled)
    torch.testing.assert_close(layer(x), base(x) + 3.0 * pooled @ layer.lora_A.T @ layer.lora_B.T)


def test_graph_shows_pooling_and_adapter_ops(tmp_path):
    lrc.compile(
        tiny_gpt(),
        lrc.Policy(method="qalora", target=["q_proj"], group_size=16, rank=2),
        dump_dir=tmp_path,
    )
    dump = (tmp_path / "02-insert-qalora.txt").read_text()
    assert "blocks.0.attn.q_proj: Linear -> IntLinear(int4, group 16, RTN)" in dump
    assert "blocks.0.attn.q_proj: + QA-LoRA(rank 2, alpha 32, A [2, 2], zero_point float)" in dump
    assert "call_module[target=blocks.0.attn.q_proj.base]" in dump
    assert (
        "call_method[target=mean]" in dump
        and "get_attr[target=blocks.1.attn.q_proj.lora_A]" in dump
    )


@pytest.mark.parametrize("zero_point", ["float", "int"])
def test_trains_and_only_adapters_change(zero_point):
    model = lrc.compile(
        tiny_gpt(), lrc.Policy(method="qalora", zero_point=zero_point, group_size=16, rank=4)
    )
    x = ids(batch=4, seq=12)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train(model, x, steps=30, lr=1e-2)
    assert losses[-1] < 0.9 * losses[0]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.endswith(("lora_A", "lora_B"))}


def test_hf_llama_qalora_through_export():
    model = hf_llama()
    x = ids()
    lrc.compile(model, lrc.Policy(method="qalora", group_size=16, rank=4), example_inputs=(x,))
    assert sum(isinstance(m, QALoRALinear) for m in model.modules()) == 14
    losses = train(model, x, steps=10, lr=1e-2, loss_fn=lambda m, t: m(t, labels=t).loss)
    assert losses[-1] < losses[0]
    assert output(model, x).shape == (2, 8, 96)


def test_bad_zero_point_and_rank():
    with pytest.raises(lrc.PolicyError, match="zero_point must be one of"):
        lrc.Policy(method="qalora", zero_point="half")
    with pytest.raises(lrc.PolicyError, match="rank=40 for layer 'blocks.0.attn.q_proj'"):
        lrc.compile(tiny_gpt(), lrc.Policy(method="qalora", rank=40, group_size=16))


@pytest.mark.parametrize("zero_point", ["float", "int"])
def test_trained_scales_train_and_fold_exactly_in_every_form(zero_point):
    """train_scales: the scales move (a log factor on the base's), the base stays as compiled,
    and every fold form computes the trained layer to float rounding (``round`` too, for the
    integer-zero training), always with the trained scales in the IntLinear."""
    policy = lrc.Policy(
        method="qalora", zero_point=zero_point, group_size=16, rank=4, train_scales=True
    )
    model = lrc.compile(tiny_gpt(), policy)
    x = ids(batch=4, seq=12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train(model, x, steps=30, lr=1e-2)
    assert losses[-1] < 0.9 * losses[0]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.endswith(("lora_A", "lora_B", "scale_gain"))}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QALoRALinear)}
    assert all(m.scale_gain.abs().max() > 1e-3 for m in layers.values())  # the scales really moved
    model.eval()
    with torch.no_grad():
        want = model(x)
        for zeros in ("split", "float", "round"):
            folded = lrc.fold(model, zeros=zeros)
            for name, m in layers.items():
                f = folded.get_submodule(name)
                assert torch.equal(f.scales, m.current_scales()) and not torch.equal(
                    f.scales, m.base.scales
                )
            if zero_point == "int" or zeros != "round":
                assert ((folded(x) - want).abs().max() / want.abs().max()).item() < 1e-5


def test_op_scale_gradient_is_autograd_through_the_dequantized_weight():
    torch.manual_seed(0)
    base = IntLinear.from_float(torch.nn.Linear(64, 24, bias=True), bits=4, group_size=16)
    scales = base.scales.clone().requires_grad_()
    x = torch.randn(3, 5, 64, requires_grad=True)
    y = torch.ops.lowrank_compiler.int_linear(x, base.qweight, scales, base.zeros, base.bias, 4, 16)
    gy = torch.randn_like(y)
    (y * gy).sum().backward()
    s2, x2 = scales.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    codes = base.dequantize() / base.scales.repeat_interleave(16, dim=1)  # q - z
    w = (codes.view(24, 4, 16) * s2[..., None]).view(24, 64)
    ((torch.nn.functional.linear(x2, w, base.bias)) * gy).sum().backward()
    torch.testing.assert_close(scales.grad, s2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_trained_scales_are_refused_by_peft_export(tmp_path):
    model = lrc.compile(
        tiny_gpt(), lrc.Policy(method="qalora", group_size=16, rank=4, train_scales=True)
    )
    with pytest.raises(lrc.AdapterError, match="train_scales=True"):
        lrc.save_peft_adapter(model, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
