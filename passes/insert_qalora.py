"""insert-qalora: group-quantize each selected layer and add a QA-LoRA adapter
(``runtime.layers.qalora``).

Float layers are quantized first (as the ``quantize`` pass does, same checks and
``quantizer``: ``"rtn"`` or ``"gptq"``, which the official QA-LoRA starts from);
layers an earlier ``quantize`` pass already turned into ``IntLinear`` are used as they
are. The adapter pools each quantization group of the input (``A: [r, K/g]``,
``B: [N, r]`` zero), so after training ``fold`` moves it into the zero points exactly.
``zero_point="int"`` trains with integer zero points (straight-through rounding);
``train_scales`` also trains each group's scale (float in MatMulNBits: the fold stays exact).
The adapter's ops are inlined so dumps show them. The adapters train in ``adapter_dtype``
(float32 by default) while the base computes in the model's dtype.
"""

from __future__ import annotations

import torch.fx as fx

from ..runtime.layers.qalora import QALoRALinear
from ..runtime.quant.formats import (
    ZERO_POINT_MODES,
    check_choice,
    check_dropout,
    check_flag,
)
from ..runtime.quant.formats import adapter_dtype as adapter_dtype_of
from .helpers import graph as G
from .helpers.rewrite import (
    adapter_options,
    inline_selected,
    io_dtypes,
    plan_quantization,
    quantize_layers,
)
from .helpers.select import TargetError
from .registry import PassResult, register_pass


@register_pass(
    "insert-qalora", "group-quantize selected layers and add group-pooled QA-LoRA adapters"
)
def insert_qalora(
    gm: fx.GraphModule,
    *,
    rank=16,
    alpha=32.0,
    dropout=0.0,
    zero_point="float",
    bits=4,
    group_size=32,
    quantizer="rtn",
    damp=0.01,
    train_scales=False,
    adapter_dtype="float32",
    overrides=None,
) -> PassResult:
    check_choice(zero_point, ZERO_POINT_MODES, "zero_point")
    dtype = adapter_dtype_of(adapter_dtype)
    check_flag(train_scales, "train_scales")
    check_dropout(dropout)
    selected = G.selected_layers(gm)
    if not selected:
        raise TargetError("no layer is selected: run find-linears before insert-qalora")
    settings = plan_quantization(
        gm, selected, bits, group_size, overrides, quantizer=quantizer, damp=damp
    )
    adapters = adapter_options(selected, rank, alpha, overrides)
    io = io_dtypes(gm, adapters)
    report = quantize_layers(gm, settings)
    params = 0
    for name, opts in adapters.items():
        layer = QALoRALinear.from_int_linear(
            gm.get_submodule(name),
            dropout=dropout,
            zero_point=zero_point,
            train_scales=train_scales,
            adapter_dtype=dtype,
            io_dtype=io[name],
            **opts,
        )
        G.swap_module(gm, name, layer)
        params += sum(p.numel() for p in layer.adapter_parameters())
        report.append(
            f"{name}: + QA-LoRA(rank {layer.rank}, alpha {layer.alpha:g}, A [{layer.rank}, "
            f"{layer.lora_A.shape[1]}], zero_point "
            f"{zero_point}{', train_scales' if train_scales else ''})"
        )
    inserted = inline_selected(gm, selected)
    stats = {
        "quantized": len(settings),
        "rewritten": len(adapters),
        "nodes_inserted": inserted,
        "adapter_params": params,
    }
    return PassResult(gm, True, stats, report)
