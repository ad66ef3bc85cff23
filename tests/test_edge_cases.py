"""Models shaped the way real code is: keyword calls, aliases, tied weights, mixed module modes."""

import io

import pytest
import torch
import torch.nn.functional as F
from models import nudged
from torch import nn

import lowrank_compiler as lrc
from lowrank_compiler.runtime import LoRALinear


class KwargCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.out = nn.Linear(16, 8)

    def forward(self, x):
        return self.out(input=self.fc(input=x))


class Aliased(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = self.a  # the same layer under two names

    def forward(self, x):
        return self.b(self.a(x))


class TiedPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight  # two layers, one weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class AlsoFunctional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(x) + F.linear(x, self.fc.weight)


class WithNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.bn = nn.BatchNorm1d(16)

    def forward(self, x):
        return self.bn(self.fc(x))


X = torch.randn(4, 16)


@pytest.mark.parametrize("inputs", [None, (X,)])
def test_layers_called_with_keyword_arguments(inputs):
    model = KwargCall()
    ref = model(X)
    lrc.compile(model, lrc.Policy(rank=2, target=["fc", "out"]), example_inputs=inputs)
    assert torch.equal(model(X), ref)


@pytest.mark.parametrize("inputs", [None, (X,)])
def test_a_layer_under_two_names_is_adapted_under_both(inputs):
    model = Aliased()
    lrc.compile(
        model,
        lrc.Policy(rank=2, target=["a", "b"] if inputs is None else ["re:[ab]"]),
        example_inputs=inputs,
    )
    assert isinstance(model.a, LoRALinear) and model.a is model.b
    nudged(model, scale=1.0, parts=("lora_B",))
    gm = lrc.compile_info(model).graph
    assert torch.equal(model(X), gm(X))


def test_tied_weights_under_export_map_each_call_to_its_own_layer():
    model = TiedPair()
    lrc.compile(model, lrc.Policy(rank=2, target=["a", "b"]), example_inputs=(X,))
    assert (
        isinstance(model.a, LoRALinear)
        and isinstance(model.b, LoRALinear)
        and model.a is not model.b
    )
    ops = {op.name: op.calls for op in lrc.compile_info(model).linears}
    assert ops == {"a": 1, "b": 1}


def test_functional_use_of_a_layers_weight_is_listed_apart():
    model = AlsoFunctional()
    ref = model(X)
    lrc.compile(model, lrc.Policy(rank=2))
    assert isinstance(model.fc, LoRALinear) and torch.equal(model(X), ref)
    status = {op.name: op.status for op in lrc.compile_info(model).linears}
    assert status == {"fc": "selected", "fc (F.linear)": "functional"}


def test_each_modules_train_flag_survives_export_tracing():
    model = WithNorm().train()
    model.bn.eval()
    lrc.compile(model, lrc.Policy(rank=2), example_inputs=(X,))
    assert model.training and not model.bn.training and model.fc.training
    failing = WithNorm().train()
    failing.bn.eval()
    with pytest.raises(lrc.PolicyError):
        lrc.compile(failing, lrc.Policy(rank=99), example_inputs=(X,))
    assert failing.training and not failing.bn.training


def test_compiled_model_pickles():
    model = lrc.compile(KwargCall(), lrc.Policy(rank=2))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(X), model(X)) and lrc.compile_info(loaded).policy == lrc.Policy(
        rank=2
    )


def test_bare_linear_gets_advice():
    with pytest.raises(lrc.TraceError, match=r"bare Linear.*nn.Sequential\(layer\)"):
        lrc.compile(nn.Linear(8, 8), lrc.Policy(rank=2))


def test_non_finite_option_values_are_rejected_before_any_swap():
    model = KwargCall()
    gm = lrc.trace(model)
    with pytest.raises(
        lrc.PassInputError, match="alpha for layer 'fc' must be a positive finite number, got 'inf'"
    ):
        lrc.PassManager("find-linears,insert-lora{rank=2,alpha=inf}").run(gm)
    assert isinstance(model.fc, nn.Linear)
