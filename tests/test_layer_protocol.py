"""The layer protocol: a layer kind defined here, with its insert pass, is compiled, trained,
folded, exported, saved and loaded by the library without a line of the library changing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lowrank_compiler as lrc
from lowrank_compiler.passes import PassResult, register_pass, unregister_pass
from lowrank_compiler.passes.helpers import graph as G
from lowrank_compiler.passes.helpers.rewrite import inline_selected
from lowrank_compiler.runtime.layers import (
    AdapterLayer,
    FoldForm,
    IntLinear,
    LoRALinear,
    QALoRALinear,
    layer_kinds,
    register_layer,
    unregister_layer,
)


class ScaleLinear(AdapterLayer):
    """``base(x) * (1 + s)``: one trained gain per output (IA3-like); folds into the weight."""

    kind = "scale"

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.gain = nn.Parameter(torch.zeros(base.out_features))  # (N,)

    def forward(self, input):
        return self.base(input) * (1 + self.gain)

    def adapter_parameters(self):
        yield self.gain

    def folded_layer(self, form: FoldForm | str | None = None) -> nn.Module:
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight * (1 + self.gain)[:, None])
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias * (1 + self.gain))
        return out.requires_grad_(False)

    def describe(self):
        return {
            "kind": self.kind,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "adapter_params": self.gain.numel(),
        }

    def lowering(self, fmt):
        return "float MatMul times a trained gain"


def insert_scale(gm, *, dummy=0) -> PassResult:
    selected = G.selected_layers(gm)
    for name in selected:
        G.swap_module(gm, name, ScaleLinear(gm.get_submodule(name)))
    inserted = inline_selected(gm, selected)
    return PassResult(gm, True, {"rewritten": len(selected), "nodes_inserted": inserted})


@pytest.fixture
def scale_kind():
    register_layer(ScaleLinear)
    register_pass("insert-scale", "multiply each selected layer's outputs by a trained gain")(
        insert_scale
    )
    yield
    unregister_layer("scale")
    unregister_pass("insert-scale")


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8))


def train(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.3)


def test_a_new_layer_kind_runs_through_compile_fold_export_and_adapter_files(scale_kind, tmp_path):
    x = torch.randn(3, 5, 16)
    model = lrc.compile(mlp(), pipeline="find-linears,insert-scale", example_inputs=(x,))
    assert [p.numel() for p in model.parameters() if p.requires_grad] == [24, 8]  # only the gains
    train(model)
    rows = {r.name: r.kind for r in lrc.summary(model).layers}
    assert rows == {"0": "scale", "2": "scale"}

    folded = lrc.fold(model)
    assert all(type(folded.get_submodule(n)) is nn.Linear for n in ("0", "2"))
    assert max(lrc.compile_info(folded).fold_errors.values()) < 1e-6
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-6)

    for m, name in ((model, "trained"), (folded, "folded")):  # the inputs compile traced with
        path = lrc.export_onnx(m, tmp_path / f"{name}.onnx")
        out = lrc.runtime.load(path)(x)
        np.testing.assert_allclose(out.numpy(), model(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    report = lrc.inspect_onnx(tmp_path / "trained.onnx")
    assert report.layers["0"] == "float MatMul times a trained gain"

    lrc.save_adapters(model, tmp_path / "adapters")
    fresh = lrc.compile(mlp(), pipeline="find-linears,insert-scale", example_inputs=(x,))
    lrc.load_adapters(fresh, tmp_path / "adapters")
    torch.testing.assert_close(fresh(x), model(x))
    with pytest.raises(lrc.AdapterError, match="is a scale layer, which has no PEFT adapter form"):
        lrc.save_peft_adapter(model, tmp_path / "peft")


def test_qdq_refuses_an_unfolded_adapter_of_any_kind(scale_kind, tmp_path):
    x = torch.randn(2, 3, 16)
    model = lrc.compile(mlp(), pipeline="find-linears,insert-scale", example_inputs=(x,))
    with pytest.raises(lrc.ExportError, match="0: unfolded scale adapter"):
        lrc.export_onnx(model, tmp_path / "m.onnx", format="qdq")


def test_the_built_in_kinds_are_registered():
    kinds = layer_kinds()
    assert {"int", "grid", "nf4", "int-embedding", "lora", "qalora", "lrqat"} <= set(kinds)
    assert (
        kinds["int"] is IntLinear
        and kinds["qalora"] is QALoRALinear
        and kinds["lora"] is LoRALinear
    )


def test_registration_checks_the_protocol():
    class NoFold(AdapterLayer):
        kind = "no-fold"

        def adapter_parameters(self):
            yield from ()

        def describe(self):
            return {}

    with pytest.raises(TypeError, match="'no-fold' .* does not define folded_layer"):
        register_layer(NoFold)

    class Clash(ScaleLinear):
        kind = "lora"

    with pytest.raises(ValueError, match="a layer kind named 'lora' is already registered"):
        register_layer(Clash)
    with pytest.raises(ValueError, match="kebab-case"):
        register_layer(type("Bad", (ScaleLinear,), {"kind": "Bad Kind"}))
    assert "no-fold" not in layer_kinds()


def test_compile_takes_a_policy_or_a_pipeline_not_both():
    with pytest.raises(lrc.PolicyError, match="a policy or a pipeline, not both"):
        lrc.compile(mlp(), lrc.Policy(), pipeline="find-linears,insert-lora")
