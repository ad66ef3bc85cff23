"""insert-lrqat: a tiny model in, every layer rewritten, equal to the quantizer's layer at step 0,
trained codes folded bit for bit into IntLinear, exported as pure MatMulNBits / QDQ."""

import onnx
import pytest
import torch
from models import hf_llama, ids, output, tiny_gpt, train

import lowrank_compiler as lrc
from lowrank_compiler.lint import lint
from lowrank_compiler.runtime import load
from lowrank_compiler.runtime.layers.grid_base import GridBase
from lowrank_compiler.runtime.layers.int_linear import IntLinear
from lowrank_compiler.runtime.layers.lrqat import LRQATLinear
from lowrank_compiler.runtime.quant.formats import grid_storage
from lowrank_compiler.runtime.quant.grid import decode_grid
from lowrank_compiler.runtime.quant.group import unpack_codes

POLICY = dict(method="lrqat", group_size=16, rank=4, alpha=8)


def layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, LRQATLinear)}


def test_rewrites_every_layer_and_starts_equal_to_the_rtn_model():
    x = ids()
    rtn = lrc.compile(tiny_gpt(), lrc.Policy(method="rtn", group_size=16))
    model = lrc.compile(tiny_gpt(), lrc.Policy(**POLICY))
    assert torch.equal(model(x), rtn(x))  # B = 0: exactly the quantized model
    found = layers(model)
    assert len(found) == 12
    for name, m in found.items():
        ref = rtn.get_submodule(name)
        assert torch.equal(m.codes(), unpack_codes(ref.qweight, 4, 16))
        assert torch.equal(m.base.scales, ref.scales) and torch.equal(m.base.zeros, ref.zeros)
        assert m.lora_A.shape == (4, m.in_features) and m.lora_B.shape == (m.out_features, 4)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{n}.lora_{ab}" for n in found for ab in "AB"
    }
    stats = lrc.compile_info(model).stats["insert-lrqat"]
    assert stats["rewritten"] == 12 and stats["adapter_params"] == sum(
        4 * (m.in_features + m.out_features) for m in found.values()
    )
    lint(lrc.compile_info(model).graph)  # raises LintError on a malformed graph


def test_gptq_start_keeps_the_fraction_gptq_rounded():
    from lowrank_compiler.runtime.quant.gptq import gptq, gptq_quantize

    torch.manual_seed(0)
    w = torch.randn(24, 64)
    x = torch.randn(512, 64) @ (torch.randn(64, 64) / 8 + torch.eye(64))
    h = x.T @ x / len(x)
    codes, scales, zeros, grid = gptq_quantize(w, h, 4, 16, grid=True)
    assert all(
        torch.equal(a, b) for a, b in zip((codes, scales, zeros), gptq_quantize(w, h, 4, 16))
    )
    assert torch.equal(torch.clamp(torch.round(grid), 0, 15).to(torch.uint8), codes)
    base = GridBase.from_weight(w, None, bits=4, group_size=16, quantizer=gptq(h))
    assert torch.equal(base.codes(), codes)
    inside = (grid >= 0) & (grid <= 15)
    assert (decode_grid(base.phi0, 4) - grid)[
        inside
    ].abs().max() <= 3 / 32  # 4 fraction bits, nudged at most one
    assert not (torch.remainder(base.phi0.float(), 16) == 8).any()  # none on a half-way point
    ref = IntLinear.from_weight(w, None, bits=4, group_size=16, quantizer=gptq(h))
    assert torch.equal(LRQATLinear.from_base(base, rank=2, alpha=4)(x[:5]), ref(x[:5]))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fixed_point_grid_rounds_to_the_quantizers_codes(bits):
    torch.manual_seed(bits)
    lin = torch.nn.Linear(256, 64)
    base = GridBase.from_float(lin, bits=bits, group_size=32)
    ref = IntLinear.from_float(lin, bits=bits, group_size=32)
    assert torch.equal(base.codes(), unpack_codes(ref.qweight, bits, 32))
    assert base.phi0.element_size() == (1 if bits <= 4 else 2)
    one = 2.0 ** grid_storage(bits)[1]  # fraction bits
    assert not (
        torch.remainder(base.phi0.float(), one) == one / 2
    ).any()  # no tie: a tiny step cannot flip a code
    assert torch.equal(base.dequantize(), ref.dequantize())


def test_graph_shows_the_op_reading_grid_and_adapter(tmp_path):
    lrc.compile(tiny_gpt(), lrc.Policy(**POLICY, target=["q_proj"]), dump_dir=tmp_path)
    dump = (tmp_path / "02-insert-lrqat.txt").read_text()
    assert (
        "blocks.0.attn.q_proj: -> LR-QAT(int4, group 16, RTN; rank 4, alpha 8, A [4, 32])" in dump
    )
    assert "call_function[target=torch.ops.lowrank_compiler.lrqat_linear]" in dump
    assert "get_attr[target=blocks.0.attn.q_proj.base.phi0]" in dump


def test_a_tiny_adapter_step_flips_no_code():
    """Ties at half-way points would flip on the first step of either sign, whatever its size."""
    torch.manual_seed(0)
    layer = LRQATLinear.from_float(torch.nn.Linear(256, 64), rank=4, alpha=8, bits=4, group_size=32)
    with torch.no_grad():
        layer.lora_B.normal_(0, 1e-6)
    assert torch.equal(layer.codes(), layer.base.codes())


@pytest.mark.parametrize("train_scales", [False, True])
def test_trains_only_adapters_and_folds_bit_for_bit(train_scales):
    model = lrc.compile(tiny_gpt(), lrc.Policy(**POLICY, train_scales=train_scales))
    x = ids(batch=4, seq=12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train(model, x, steps=30, lr=3e-2)
    assert losses[-1] < 0.9 * losses[0]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = ("lora_A", "lora_B") + (("scale_gain",) if train_scales else ())
    assert changed == {k for k in before if k.endswith(trainable) and ".base." not in k}
    moved = sum(int((m.codes() != m.base.codes()).sum()) for m in layers(model).values())
    assert moved > 50  # the adapters really changed codes
    folded = lrc.fold(model)
    for name, m in layers(model).items():
        f = folded.get_submodule(name)
        assert isinstance(f, IntLinear) and f.correction is None and not f.float_zeros
        assert torch.equal(unpack_codes(f.qweight, 4, 16), m.codes())
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))
    assert max(lrc.compile_info(folded).fold_errors.values()) == 0.0


def test_every_fold_form_gives_the_same_integer_layer():
    model = lrc.compile(tiny_gpt(), lrc.Policy(**POLICY))
    train(model, ids(batch=4, seq=12), steps=5, lr=3e-2)
    forms = [lrc.fold(model, zeros=z) for z in ("split", "float", "round")]
    for a, b in zip(forms[0].state_dict().values(), forms[1].state_dict().values()):
        assert torch.equal(a, b)
    assert all(
        torch.equal(a, b)
        for a, b in zip(forms[0].state_dict().values(), forms[2].state_dict().values())
    )


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
def test_hf_llama_exports_pure_int4_with_no_correction(tmp_path, fmt):
    model = hf_llama()
    x = ids()
    lrc.compile(model, lrc.Policy(**POLICY), example_inputs=(x,))
    losses = train(model, x, steps=8, lr=3e-2, loss_fn=lambda m, t: m(t, labels=t).loss)
    assert losses[-1] < losses[0]
    sources = [("unfolded", model)] + (
        [("folded", lrc.fold(model))] if fmt == "matmulnbits" else []
    )
    for name, source in sources:  # unfolded: exported as its fold
        path = lrc.export_onnx(source, tmp_path / f"{name}.onnx", example_inputs=(x,), format=fmt)
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        int_ops = (
            ops.count("MatMulNBits") if fmt == "matmulnbits" else ops.count("DequantizeLinear")
        )
        assert int_ops == 14 and "ReduceSum" not in ops and "Round" not in ops
        assert lrc.inspect_onnx(path).is_pure_int4
        y = load(path)(ids(3, 5, seed=4))
        y = y[0] if isinstance(y, tuple) else y
        with torch.no_grad():
            ref = output(model, ids(3, 5, seed=4))
        assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_bad_options_are_named():
    with pytest.raises(
        lrc.PolicyError, match="train_scales=True applies to method 'qalora' and 'lrqat'"
    ):
        lrc.Policy(method="lora", train_scales=True)
    with pytest.raises(lrc.PolicyError, match="train_scales must be true or false"):
        lrc.Policy(method="lrqat", train_scales="yes")
    with pytest.raises(lrc.PolicyError, match="dropout=0.1: method 'lrqat'"):
        lrc.Policy(method="lrqat", dropout=0.1)
    with pytest.raises(lrc.PolicyError, match="rank=40 for layer 'blocks.0.attn.q_proj'"):
        lrc.compile(tiny_gpt(), lrc.Policy(method="lrqat", rank=40, group_size=16))
    with pytest.raises(
        lrc.PolicyError, match=r"blocks.0.mlp.down_proj: group_size=48 is not a power of two"
    ):
        lrc.compile(
            tiny_gpt(), pipeline="find-linears{target=[down_proj]},insert-lrqat{group_size=48}"
        )


def test_op_gradients_are_the_straight_through_ones_of_plain_autograd():
    """The op recomputes W in its backward; its gradients equal autograd's through round_ste and
    clamp."""
    torch.manual_seed(0)
    layer = LRQATLinear.from_float(
        torch.nn.Linear(64, 24), rank=4, alpha=8, bits=4, group_size=16, train_scales=True
    )
    with torch.no_grad():
        layer.lora_B.normal_(
            0, 3.0
        )  # codes move, some out of the range (clamped: no gradient there)
    x = torch.randn(3, 5, 64, requires_grad=True)
    y = layer(x)
    gy = torch.randn_like(y)
    (y * gy).sum().backward()
    ref = [
        t.detach().clone().requires_grad_()
        for t in (x, layer.lora_A, layer.lora_B, layer.scale_gain)
    ]
    x2, a, b, gain = ref
    phi = layer.base.grid() + (b @ a) * layer.scale
    q = torch.clamp(phi + (torch.round(phi) - phi).detach(), 0, 15)
    s = layer.base.scales * torch.exp(gain)  # the trained scales: a log factor on the base's
    w = ((q.view(24, 4, 16) - layer.base.zero_points()[..., None]) * s[..., None]).view(24, 64)
    y2 = torch.nn.functional.linear(x2, w, layer.base.bias)
    assert torch.equal(y2, y)
    (y2 * gy).sum().backward()
    assert ((torch.round(phi) < 0) | (torch.round(phi) > 15)).any()
    for got, want in zip(
        (x.grad, layer.lora_A.grad, layer.lora_B.grad, layer.scale_gain.grad), [t.grad for t in ref]
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_summary_rows_name_the_method_and_what_trains():
    model = lrc.compile(tiny_gpt(), lrc.Policy(**POLICY, train_scales=True, target=["q_proj"]))
    rows = {r.name: r for r in lrc.summary(model).layers}
    row = rows["blocks.0.attn.q_proj"]
    assert (row.kind, row.rank, row.bits, row.group_size, row.zeros) == ("lrqat", 4, 4, 16, "int")
    assert row.trainable == 4 * (32 + 32) + 32 * 2  # A, B and one scale per row and group
    base = model.blocks[0].attn.q_proj.base
    frozen = sum(b.numel() * b.element_size() for n, b in base.named_buffers() if n != "bias")
    assert (
        frozen == 32 * 32 + 32 * 2 * 4 + 32
    )  # 1-byte grid, f32 scales, packed 4-bit zero points: 0.32x fp32
    folded = {r.name: r for r in lrc.summary(lrc.fold(model)).layers}["blocks.0.attn.q_proj"]
    assert (folded.kind, folded.zeros, folded.fold_rel_err) == ("int4", "int", 0.0)
