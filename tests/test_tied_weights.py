"""Models whose output head shares the embedding's weight (``head.weight = emb.weight``, as nanoGPT
does): every method, both tracers, the head left alone by ``all-linear`` or targeted explicitly."""

import pytest
import torch
from models import nudged, rel_err
from torch import nn

import lowrank_compiler as lrc

V, D = 64, 32


class TiedDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.fc = nn.Linear(D, D)
        self.head = nn.Linear(D, V, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, idx):
        return self.head(torch.relu(self.fc(self.emb(idx))))


def tied(seed=0):
    torch.manual_seed(seed)
    return TiedDecoder()


X = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(5))
BOUND = {
    "lora": 0.0,
    "qlora": 0.2,
    "qalora": 0.15,
    "rtn": 0.15,
}  # step 0: LoRA exact, the rest 4-bit rounding


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("method", ["lora", "qalora", "rtn", "qlora"])
@pytest.mark.parametrize("target", ["all-linear", ("fc", "head")])
def test_tied_head_compiles_folds_and_keeps_the_embedding(tracer, method, target):
    model = tied()
    with torch.no_grad():
        ref = model(X)
    table = model.emb.weight
    lrc.compile(
        model,
        lrc.Policy(method=method, target=target, group_size=16, rank=4),
        example_inputs=(X,) if tracer == "export" else None,
    )
    info = lrc.compile_info(model)
    status = {op.name: op.status for op in info.linears}
    assert status["fc"] == "selected"
    assert status["head"] == ("selected" if target != "all-linear" else "output-head")
    rewritten = {n for n in ("fc", "head") if type(model.get_submodule(n)) is not nn.Linear}
    assert rewritten == ({"fc", "head"} if target != "all-linear" else {"fc"})
    assert (
        model.emb.weight is table and table.dtype == torch.float32
    )  # the lookup keeps the float table
    lrc.lint(info.graph)
    with torch.no_grad():
        assert rel_err(model(X), ref) <= BOUND[method]
    if method != "rtn":
        nudged(model, scale=0.05, parts=("lora_B",))
        with torch.no_grad():
            trained = model(X)
            deployed = lrc.fold(model)
            bound = 1e-5 if method in ("lora", "qalora") else 0.2  # QLoRA's merge requantizes
            assert rel_err(deployed(X), trained) <= bound
