"""A partial last group: layers whose input width the group size does not divide get
``ceil(K / g)`` groups, the last one shorter, in every quantizer, fold form and export format."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowrank_compiler as lrc
from lowrank_compiler.runtime.layers import (
    GridBase,
    IntLinear,
    LRQATLinear,
    NF4Linear,
    QALoRALinear,
)
from lowrank_compiler.runtime.quant.gptq import gptq
from lowrank_compiler.runtime.quant.group import (
    dequantize,
    group_count,
    group_sum,
    pack_codes,
    quantize,
    quantize_packed,
    unpack_codes,
)

WIDTHS = [
    (172, 32),
    (40, 32),
    (576, 128),
    (960, 128),
]  # stories260K's MLP; SmolLM's, SmolLM2's hidden


def step_of(layer: IntLinear) -> torch.Tensor:
    """Each weight's quantization step ``[N, K]``: its group's scale."""
    return layer.scales.repeat_interleave(layer.group_size, 1)[:, : layer.in_features]


@pytest.mark.parametrize("k, g", WIDTHS)
def test_rtn_and_gptq_hold_any_width_within_half_a_step(k, g):
    torch.manual_seed(k)
    w, x = torch.randn(24, k), torch.randn(256, k)
    rtn = IntLinear.from_weight(w, None, bits=4, group_size=g)
    groups = group_count(k, g)
    assert rtn.qweight.shape == (24, groups, g // 2) and rtn.scales.shape == (24, groups)
    assert ((rtn.dequantize() - w).abs() <= step_of(rtn) / 2 + 1e-6).all()
    # the last group is min-max over its own columns: its step is set by them alone
    last = w[:, (groups - 1) * g :]
    span = last.amax(1).clamp(min=0) - last.amin(1).clamp(max=0)
    torch.testing.assert_close(rtn.scales[:, -1], span / 15)
    h = x.T @ x / len(x)
    q = IntLinear.from_weight(w, None, bits=4, group_size=g, quantizer=gptq(h))
    err = lambda layer: ((x @ (layer.dequantize() - w).T) ** 2).mean()  # noqa: E731
    assert err(q) < err(rtn)  # GPTQ's error feedback across the partial group too


@pytest.mark.parametrize("k, g", WIDTHS)
def test_every_fold_form_is_exact_as_for_whole_groups(k, g):
    torch.manual_seed(0)
    lin, x = nn.Linear(k, 16), torch.randn(5, k)
    base = IntLinear.from_float(lin, bits=4, group_size=g)
    for zero_point, forms in (("float", ("split", "float")), ("int", ("split",))):
        layer = QALoRALinear(base, rank=4, alpha=8.0, zero_point=zero_point)
        with torch.no_grad():
            layer.lora_B.normal_(0.0, 2.0)
        y = layer(x)
        for form in forms:
            folded = layer.folded_layer(form)
            assert folded.in_features == k
            assert (folded(x) - y).abs().max() <= 1e-5 * y.abs().max(), (zero_point, form)
            assert layer.fold_error(folded, x) <= 1e-5
    lrqat = LRQATLinear(
        GridBase.from_float(lin, bits=4, group_size=g), rank=4, alpha=8.0, train_scales=True
    )
    with torch.no_grad():
        lrqat.lora_B.normal_(0.0, 0.5)
        lrqat.scale_gain.normal_(0.0, 0.1)
    torch.testing.assert_close(lrqat.folded_layer()(x), lrqat(x), rtol=0, atol=0)  # bit for bit


def test_qalora_pools_the_short_group_over_its_own_width():
    base = IntLinear.from_weight(torch.randn(8, 40), None, bits=4, group_size=32)
    layer = QALoRALinear(base, rank=2, alpha=2.0)
    x = torch.randn(3, 40)
    torch.testing.assert_close(
        layer.pool(x), torch.stack([x[:, :32].mean(1), x[:, 32:].mean(1)], 1)
    )
    torch.testing.assert_close(
        group_sum(x, 32), torch.stack([x[:, :32].sum(1), x[:, 32:].sum(1)], 1)
    )


def test_nf4_takes_a_partial_last_block():
    torch.manual_seed(0)
    lin = nn.Linear(43, 3)  # 129 weights: two blocks of 64 and one of 1
    layer = NF4Linear.from_float(lin)
    assert layer.absmax.shape == (3,)
    w, back = lin.weight.detach().reshape(-1), layer.dequantize().reshape(-1)
    assert back[-1] == w[-1]  # a block of one weight: it is its own absmax, level +-1, exact
    gap = 1.0 - 0.6961928009986877  # NF4's widest gap between neighbouring levels (-1, -0.696)
    for block in range(3):
        part = slice(64 * block, 64 * (block + 1))
        assert (back[part] - w[part]).abs().max() <= gap / 2 * w[part].abs().max() + 1e-7


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 300),
    g=st.sampled_from([16, 32, 64, 128]),
    bits=st.sampled_from([2, 3, 4, 8]),
    n=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_quantize_pack_and_dequantize_hold_any_width(k, g, bits, n, seed):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    codes, scales, zeros = quantize(w, bits, g)
    assert codes.shape == (n, k) and scales.shape == (n, group_count(k, g))
    qweight, packed_scales, packed_zeros = quantize_packed(w, bits, g)
    assert qweight.shape == (n, group_count(k, g), g * bits // 8)
    assert torch.equal(unpack_codes(qweight, bits, g, k), codes)
    assert torch.equal(pack_codes(codes, bits, g), qweight)  # a partial group padded with code 0
    assert torch.equal(
        unpack_codes(qweight, bits, g)[:, k:],
        torch.zeros(n, group_count(k, g) * g - k, dtype=torch.uint8),
    )
    back = dequantize(qweight, packed_scales, packed_zeros, bits, g, k)
    step = scales.repeat_interleave(g, 1)[:, :k]
    assert back.shape == (n, k) and ((back - w).abs() <= step / 2 + 1e-5 * step.clamp(min=1)).all()


def widths_model(seed: int = 0) -> nn.Module:
    """Input widths 172 and 40 at group 32 (partial last groups), 64 (whole)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 172), nn.ReLU(), nn.Linear(172, 40), nn.ReLU(), nn.Linear(40, 8)
    )


def hidden_widths_model(seed: int = 0) -> nn.Module:
    """Input widths 576 and 960 at group 128 (4.5 and 7.5 groups: SmolLM's and SmolLM2's
    hidden), and 40 (a single group, shorter than the group size)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(576, 40), nn.ReLU(), nn.Linear(40, 960), nn.ReLU(), nn.Linear(960, 24)
    )


MODELS = {32: (widths_model, 64), 128: (hidden_widths_model, 576)}  # group: (model, input width)


@pytest.mark.parametrize(
    "policy, zeros",
    [
        (dict(method="qalora"), "split"),
        (dict(method="qalora"), "float"),
        (dict(method="qalora"), "round"),  # lossy against the trained model, not the file
        (dict(method="qalora", zero_point="int"), "round"),  # integer zeros: exact anyway
        (dict(method="qalora", quantizer="gptq"), "split"),
        (dict(method="lrqat"), "split"),
        (dict(method="rtn"), None),
        (dict(method="qlora"), "split"),
    ],
    ids=lambda v: "-".join(map(str, v.values())) if isinstance(v, dict) else str(v),
)
@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
@pytest.mark.parametrize("g", sorted(MODELS))
def test_exported_files_match_the_model_in_onnxruntime(policy, zeros, fmt, g, tmp_path):
    build, k = MODELS[g]
    x, float_model = torch.randn(2, 3, k), build()  # build seeds: the draws below are fixed
    calibration = [torch.randn(4, 32, k) for _ in range(2)] if "quantizer" in policy else None
    model = lrc.compile(
        float_model,
        lrc.Policy(**policy, group_size=g, rank=4),
        example_inputs=(x,),
        calibration=calibration,
    )
    if calibration:  # GPTQ ran on every layer, the partial groups' too
        assert lrc.compile_info(model).stats["calibrate"]["layers"] == 3
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.3)
    deployed = lrc.fold(model, zeros=zeros) if zeros else model
    if zeros:
        error = max(lrc.compile_info(deployed).fold_errors.values())
        if policy["method"] == "qlora":
            assert error <= 0.5
        elif zeros == "round" and "zero_point" not in policy:
            assert error > 1e-3  # integer zero points alone, clamped to the codes: lossy
        else:
            assert error <= 1e-5
    path = lrc.export_onnx(deployed, tmp_path / "m.onnx", format=fmt)
    report = lrc.inspect_onnx(path)
    assert report.is_pure_int4, report.problems
    session = lrc.runtime.load(path)
    for shape in ((1, 1, k), (3, 7, k)):
        x = torch.randn(*shape)
        ref = deployed(x).detach()
        assert (session(x) - ref).abs().max() <= 1e-5 * ref.abs().max(), (shape, report.layers)


def test_a_tied_table_off_the_grid_shares_its_head_codes(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(96, 172)
            self.head = nn.Linear(172, 96, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(torch.relu(self.emb(ids)))

    torch.manual_seed(0)
    ids = torch.randint(0, 96, (2, 5))
    model = lrc.compile(
        Tied(), lrc.Policy(method="rtn", target=["head"], group_size=32), example_inputs=(ids,)
    )
    path = lrc.export_onnx(model, tmp_path / "m.onnx", embeddings="int4")
    report = lrc.inspect_onnx(path)
    assert report.ops.get("Slice") == 1  # the head's padded blob cut to the table's 86 bytes a row
    assert report.initializer_bytes["uint8"] < 96 * 6 * 16 + 96 * 86  # the codes once, not twice
    lrc.quantize_embeddings(model)
    out = lrc.runtime.load(path)(ids)
    torch.testing.assert_close(out, model(ids).detach(), rtol=1e-5, atol=1e-5)


def test_peft_has_no_partial_group_for_qalora_but_lora_takes_any_width(tmp_path):
    model = lrc.compile(widths_model(), lrc.Policy(method="qalora", group_size=32, rank=4))
    with pytest.raises(
        lrc.AdapterError, match=r"'2' \(2 in all\) has a partial last group \(input width 172"
    ):
        lrc.save_peft_adapter(model, tmp_path / "peft")
    lora = lrc.compile(widths_model(), lrc.Policy(method="lora", rank=4))
    assert (lrc.save_peft_adapter(lora, tmp_path / "lora") / "adapter_model.safetensors").is_file()


def test_adapters_and_a_folded_copy_round_trip(tmp_path):
    model = lrc.compile(
        widths_model(), lrc.Policy(method="qalora", group_size=32, rank=4, train_scales=True)
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.1)
    lrc.save_adapters(model, tmp_path / "a")
    fresh = lrc.load_adapters(
        lrc.compile(widths_model(), lrc.compile_info(model).policy), tmp_path / "a"
    )
    x = torch.randn(4, 64)
    torch.testing.assert_close(fresh(x), model(x))
    assert np.isfinite(max(lrc.compile_info(lrc.fold(fresh)).fold_errors.values()))


def test_the_command_line_compiles_folds_and_exports_partial_groups(tmp_path, capsys):
    from lowrank_compiler.app.cli import main

    factory = f"{Path(__file__).resolve().parent / 'factories.py'}:widths"
    (tmp_path / "p.json").write_text('{"method": "qalora", "group_size": 32, "rank": 4}')
    assert (
        main(
            [
                "-q",
                "compile",
                factory,
                "--policy",
                str(tmp_path / "p.json"),
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    assert main(["-q", "fold", str(tmp_path / "c"), "--out", str(tmp_path / "f")]) == 0
    assert main(["-q", "export", str(tmp_path / "f"), "--out", str(tmp_path / "m.onnx")]) == 0
    assert lrc.inspect_onnx(tmp_path / "m.onnx").is_pure_int4
    assert main(["inspect", str(tmp_path / "f")]) == 0
    assert "int4" in capsys.readouterr().out
