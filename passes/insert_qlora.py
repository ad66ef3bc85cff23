"""insert-qlora: the QLoRA baseline: NF4 base (``runtime.layers.nf4``) plus a full-width LoRA
adapter.

Each selected layer becomes ``LoRALinear(NF4Linear(W))``: blocks of ``block_size``
(64) weights in NF4 with optional double quantization of the block scales, and
``A: [r, K]``, ``B: [N, r]`` in float. ``fold`` later merges it the way the peers do
(dequantize, add ``s B A``, requantize to INT-N groups), which re-rounds every weight.
"""

from __future__ import annotations

import torch.fx as fx

from ..runtime.errors import PolicyError
from ..runtime.layers.linear_kinds import weight_out_in
from ..runtime.layers.lora import LoRALinear
from ..runtime.layers.nf4 import NF4Linear
from ..runtime.progress import progress
from ..runtime.quant.formats import adapter_dtype as adapter_dtype_of
from ..runtime.quant.formats import check_dropout
from ..runtime.quant.group import count_nonfinite
from .helpers import graph as G
from .helpers.rewrite import check_rank, inline_selected, io_dtypes
from .helpers.select import TargetError, check_overrides, resolve_layer_options
from .registry import PassResult, register_pass


@register_pass(
    "insert-qlora", "QLoRA baseline: NF4 base (blocks of 64) plus full-width LoRA adapters"
)
def insert_qlora(
    gm: fx.GraphModule,
    *,
    rank=16,
    alpha=32.0,
    dropout=0.0,
    block_size=64,
    double_quant=False,
    adapter_dtype="float32",
    overrides=None,
) -> PassResult:
    check_dropout(dropout)
    dtype = adapter_dtype_of(adapter_dtype)
    if block_size not in (32, 64, 128, 256):
        raise PolicyError(f"block_size must be one of (32, 64, 128, 256), got {block_size!r}")
    selected = G.selected_layers(gm)
    if not selected:
        raise TargetError("no layer is selected: run find-linears before insert-qlora")
    check_overrides(overrides, list(selected))
    plans = {}
    for name, (op, _) in selected.items():
        opts = resolve_layer_options(name, {"rank": rank, "alpha": alpha}, overrides)
        check_rank(name, opts["rank"], opts["alpha"], op.in_features, op.out_features)
        weight = weight_out_in(gm.get_submodule(name))
        bad = count_nonfinite(weight)
        if bad:
            raise PolicyError(
                f"layer {name!r} ([{op.out_features}, {op.in_features}]) cannot be stored in NF4: "
                f"it needs finite weights, and its weight has {bad} NaN/inf value(s)"
            )
        plans[name] = opts
    io = io_dtypes(gm, plans)
    report, params = [], 0
    for name, opts in progress(plans.items(), "nf4", total=len(plans)):
        base = NF4Linear.from_float(
            gm.get_submodule(name), block_size=block_size, double_quant=double_quant
        )
        layer = LoRALinear.from_linear(
            base, dropout=dropout, adapter_dtype=dtype, io_dtype=io[name], **opts
        )
        G.swap_module(gm, name, layer)
        params += sum(p.numel() for p in layer.adapter_parameters())
        report.append(
            f"{name}: NF4(block {block_size}{', double quant' if double_quant else ''}) + "
            f"LoRA(rank {layer.rank}, alpha {layer.alpha:g})"
        )
    inserted = inline_selected(gm, selected)
    return PassResult(
        gm,
        True,
        {"rewritten": len(plans), "nodes_inserted": inserted, "adapter_params": params},
        report,
    )
