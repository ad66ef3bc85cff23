import io

import pytest
import torch
from models import ids, rel_err, tiny_gpt, train

import lowrank_compiler as lrc
from lowrank_compiler.runtime.layers.int_linear import IntLinear
from lowrank_compiler.runtime.layers.protocol import AdapterLayer


def trained(method="qalora", zero_point="float", steps=50, **policy):
    """A compiled TinyGPT after ``steps`` of training: adapters far from zero."""
    model = lrc.compile(
        tiny_gpt(),
        lrc.Policy(method=method, zero_point=zero_point, group_size=16, rank=4, **policy),
    )
    model.train()
    train(model, ids(batch=4, seq=12), steps=steps, lr=1e-2)
    model.eval()
    return model


@pytest.fixture(scope="module")
def qalora_float():
    return trained()


@pytest.fixture(scope="module")
def qalora_int():
    return trained(zero_point="int")


def test_adapters_are_non_trivial(qalora_float, qalora_int):
    for model in (qalora_float, qalora_int):
        layer = model.blocks[0].attn.q_proj
        assert layer.lora_B.abs().max() > 1e-2
        moved = layer.folded_zero_points() - layer.base.zero_points().double()
        assert moved.abs().max() >= 1.0  # the fold really changes the zero points


@pytest.mark.parametrize("zeros, bound", [("split", 1e-5), ("float", 1e-5)])
def test_float_training_folds_exactly(qalora_float, zeros, bound):
    x = ids(batch=3, seq=10, seed=7)
    with torch.no_grad():
        y = qalora_float(x)
        folded = lrc.fold(qalora_float, zeros=zeros)
        assert rel_err(folded(x), y) <= bound
    errors = lrc.compile_info(folded).fold_errors
    assert len(errors) == 12 and max(errors.values()) <= bound
    layer = folded.blocks[0].attn.q_proj
    assert isinstance(layer, IntLinear)
    assert layer.float_zeros == (zeros == "float") and (layer.correction is not None) == (
        zeros == "split"
    )
    original = qalora_float.blocks[0].attn.q_proj.base
    assert torch.equal(layer.qweight, original.qweight) and torch.equal(
        layer.scales, original.scales
    )


def test_round_shows_the_loss_split_avoids(qalora_float):
    x = ids(batch=3, seq=10, seed=7)
    with torch.no_grad():
        y = qalora_float(x)
        err_round = rel_err(lrc.fold(qalora_float, zeros="round")(x), y)
        err_split = rel_err(lrc.fold(qalora_float, zeros="split")(x), y)
    assert err_round > 100 * err_split and err_round > 1e-3


def test_int_training_folds_to_integer_zeros_exactly(qalora_int):
    x = ids(batch=3, seq=10, seed=7)
    with torch.no_grad():
        y = qalora_int(x)
        for zeros in ("split", "float", "round"):
            folded = lrc.fold(qalora_int, zeros=zeros)
            assert rel_err(folded(x), y) <= 1e-6
            layer = folded.blocks[1].mlp.down_proj
            assert not layer.float_zeros and layer.correction is None


def test_fold_returns_a_new_model_and_leaves_the_trained_one(qalora_float, tmp_path):
    before = {k: v.clone() for k, v in qalora_float.state_dict().items()}
    folded = lrc.fold(qalora_float, dump_dir=tmp_path)
    assert folded is not qalora_float
    assert all(torch.equal(v, qalora_float.state_dict()[k]) for k, v in before.items())
    assert not any(isinstance(m, AdapterLayer) for m in folded.modules())
    assert any(isinstance(m, AdapterLayer) for m in qalora_float.modules())
    assert not any(p.requires_grad for p in folded.parameters())
    # the codes are shared (never written), everything else is the copy's own
    trained_q, folded_q = qalora_float.blocks[0].attn.q_proj, folded.blocks[0].attn.q_proj
    assert folded_q.qweight.data_ptr() == trained_q.base.qweight.data_ptr()
    assert folded.wte.weight.data_ptr() != qalora_float.wte.weight.data_ptr()
    assert folded_q.scales.data_ptr() != trained_q.base.scales.data_ptr()
    gm = lrc.compile_info(folded).graph
    assert not any("lowrank_compiler.adapter" in n.meta for n in gm.graph.nodes)  # collapsed
    assert (
        sum(
            n.op == "call_module" and isinstance(gm.get_submodule(n.target), IntLinear)
            for n in gm.graph.nodes
        )
        == 12
    )
    lrc.lint(gm)
    x = ids()
    assert torch.equal(gm(x), folded(x))
    dump = (tmp_path / "03-fold.txt").read_text()
    assert dump.startswith("// after pass fold{zeros=split,bits=4,group_size=16}")
    assert "blocks.0.attn.q_proj: qalora -> IntLinear(split zeros)  rel_err" in dump
    assert lrc.compile_info(folded).pipeline.endswith(",fold{zeros=split,bits=4,group_size=16}")
    s = lrc.summary(folded)
    assert (
        s.layers[0].kind == "int4"
        and s.layers[0].zeros == "split"
        and s.layers[0].fold_rel_err < 1e-5
    )
    assert "fold err" in str(s)


def test_lora_fold_merges_into_linear():
    model = trained(method="lora", steps=20)
    x = ids()
    with torch.no_grad():
        folded = lrc.fold(model)
        assert isinstance(folded.blocks[0].attn.q_proj, torch.nn.Linear)
        assert rel_err(folded(x), model(x)) <= 1e-5


def test_qlora_merge_requantizes_and_is_far_worse(qalora_float):
    qlora = trained(method="qlora", steps=50)
    x = ids(batch=3, seq=10, seed=7)
    with torch.no_grad():
        merged = lrc.fold(qlora)
        err_qlora = rel_err(merged(x), qlora(x))
        err_ours = rel_err(lrc.fold(qalora_float)(x), qalora_float(x))
    assert (
        isinstance(merged.blocks[0].attn.q_proj, IntLinear)
        and merged.blocks[0].attn.q_proj.group_size == 16
    )
    assert err_qlora > 1000 * err_ours


def test_fold_after_pickling_the_model(qalora_float):
    buf = io.BytesIO()
    torch.save(qalora_float, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert lrc.compile_info(loaded).graph is None
    x = ids()
    with torch.no_grad():
        assert rel_err(lrc.fold(loaded)(x), qalora_float(x)) <= 1e-5


def test_fold_bad_input(qalora_float):
    with pytest.raises(lrc.LowRankError, match="not produced by lowrank_compiler.compile"):
        lrc.fold(tiny_gpt())
    with pytest.raises(lrc.PolicyError, match="zeros must be one of"):
        lrc.fold(qalora_float, zeros="nearest")
    with pytest.raises(lrc.LowRankError, match="holds no adapter layers"):
        lrc.fold(lrc.fold(qalora_float))
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        lrc.fold("model")


@pytest.mark.parametrize("zeros", ["split", "float", "round"])
def test_fold_error_stat_matches_the_layers_outputs(qalora_float, zeros):
    """The fold's rel_err is computed through the group sums; it must agree with running the
    adapter layer and the folded layer on the same probe batch."""
    folded = lrc.fold(qalora_float, zeros=zeros)
    stat = lrc.compile_info(folded).fold_errors["blocks.1.mlp.down_proj"]
    layer, out = qalora_float.blocks[1].mlp.down_proj, folded.blocks[1].mlp.down_proj
    x = torch.randn(16, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, y_fold = layer(x), out(x)
    direct = ((y_fold - y).abs().max() / y.abs().max()).item()
    if zeros == "round":
        assert direct > 1e-3 and stat == pytest.approx(direct, rel=1e-3)
    else:  # exact folds: float64 maths vs float32 outputs, both at rounding level
        assert stat <= 1e-6 and direct <= 1e-5


def test_group_space_identities(qalora_float):
    """base(x) + group_sum(x) @ group_delta^T is the adapter layer; IntLinear.rows computes
    those outputs; group_offset is the part of W constant inside each group."""
    from lowrank_compiler.runtime.quant.group import group_sum

    layer = qalora_float.blocks[0].mlp.up_proj
    x = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = layer(x)
        g = layer.base.group_size
        via = layer.base(x).double() + group_sum(x.double(), g) @ layer.group_delta().T
        assert rel_err(via.float(), y) <= 1e-6
        index = torch.tensor([0, 3, layer.out_features - 1])
        assert rel_err(layer.base.rows(index)(x), layer.base(x)[:, index]) <= 1e-6
        folded = layer.folded_layer("split")
        w = folded.dequantize().double() + folded.correction.double().T.repeat_interleave(
            g, 1
        )  # (N, K)
        codes_part = w - folded.group_offset().repeat_interleave(g, 1)  # scales * q
        from lowrank_compiler.runtime.quant.group import unpack_codes

        q = unpack_codes(folded.qweight, folded.bits, g).double()
        assert torch.allclose(
            codes_part, folded.scales.double().repeat_interleave(g, 1) * q, atol=1e-6
        )
