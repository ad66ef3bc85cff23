import torch
from models import ids, tiny_gpt, train

import lowrank_compiler as lrc
from lowrank_compiler.runtime.layers.lora import LoRALinear
from lowrank_compiler.runtime.layers.nf4 import NF4Linear
from lowrank_compiler.runtime.quant.nf4 import NF4_LEVELS

MAX_HALF_GAP = float((NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max()) / 2


def test_nf4_round_trip_within_half_the_widest_level_gap():
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64)
    for double in (False, True):
        m = NF4Linear.from_float(lin, double_quant=double)
        w = lin.weight.detach()
        absmax = w.reshape(-1, 64).abs().amax(-1, keepdim=True)
        err = (m.dequantize() - w).reshape(-1, 64).abs()
        slack = 1e-3 if double else 1e-6  # 8-bit block scales move absmax slightly
        assert (err <= absmax * (MAX_HALF_GAP + slack)).all()
    plain = sum(b.numel() * b.element_size() for b in NF4Linear.from_float(lin).buffers())
    dq = sum(
        b.numel() * b.element_size() for b in NF4Linear.from_float(lin, double_quant=True).buffers()
    )
    assert dq < plain
    assert 0.0 in NF4_LEVELS.tolist() and NF4_LEVELS.min() == -1 and NF4_LEVELS.max() == 1


def test_qlora_compiles_trains_and_counts_full_width_adapters(tmp_path):
    model = lrc.compile(
        tiny_gpt(), lrc.Policy(method="qlora", rank=4, double_quant=True), dump_dir=tmp_path
    )
    layer = model.blocks[0].mlp.up_proj
    assert (
        isinstance(layer, LoRALinear)
        and isinstance(layer.base, NF4Linear)
        and layer.base.double_quant
    )
    assert layer.lora_A.shape == (4, 32) and layer.lora_B.shape == (128, 4)
    assert lrc.summary(model).layers[0].kind == "qlora"
    assert (
        "NF4(block 64, double quant) + LoRA(rank 4, alpha 32)"
        in (tmp_path / "02-insert-qlora.txt").read_text()
    )
    x = ids(batch=4, seq=12)
    model.train()
    losses = train(model, x, steps=20)
    assert losses[-1] < 0.9 * losses[0]
