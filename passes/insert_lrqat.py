"""insert-lrqat: quantize each selected layer onto its grid and put an LR-QAT adapter inside the
rounding.

Float layers are quantized as the ``quantize`` pass does (same checks, ``quantizer``
``"rtn"`` or ``"gptq"``), but keep each weight's continuous grid position ``Phi0``
(``runtime.layers.grid_base``: fixed point, rounding to the quantizer's codes) instead of packed
codes.
Layers an earlier ``quantize`` pass already made ``IntLinear`` start from their codes
(``Phi0`` = the code: the fractional parts were rounded away). The adapter
(``runtime.layers.lrqat``: ``A: [r, K]``, ``B: [N, r]`` zero) moves ``Phi0`` before the
rounding, so the layer starts equal to the quantizer's and ``fold`` packs the trained
codes with no correction. ``train_scales`` also trains each group's scale.
The layer's op (``lrqat_linear``) is inlined, so dumps show it reading the grid and adapter.
"""

from __future__ import annotations

import torch.fx as fx

from ..runtime.errors import PolicyError
from ..runtime.layers.grid_base import GridBase
from ..runtime.layers.int_linear import IntLinear
from ..runtime.layers.lrqat import LRQATLinear
from ..runtime.progress import progress
from ..runtime.quant.formats import adapter_dtype as adapter_dtype_of
from ..runtime.quant.formats import check_flag
from .helpers import graph as G
from .helpers.rewrite import (
    adapter_options,
    inline_selected,
    io_dtypes,
    plan_quantization,
    rounding,
)
from .helpers.select import TargetError
from .registry import PassResult, register_pass


def _grid_base(gm: fx.GraphModule, name: str, opts: dict | None) -> GridBase:
    module = gm.get_submodule(name)
    if isinstance(module, IntLinear):
        try:
            return GridBase.from_int_linear(module)
        except ValueError as e:
            raise PolicyError(
                f"{name}: {e}; quantize it in this pass instead (no quantize pass before it)"
            ) from None
    return GridBase.from_float(module, **opts)


@register_pass(
    "insert-lrqat",
    "quantize selected layers onto their grid and train low-rank adapters inside the rounding",
)
def insert_lrqat(
    gm: fx.GraphModule,
    *,
    rank=16,
    alpha=32.0,
    bits=4,
    group_size=32,
    quantizer="rtn",
    damp=0.01,
    train_scales=False,
    adapter_dtype="float32",
    overrides=None,
) -> PassResult:
    check_flag(train_scales, "train_scales")
    dtype = adapter_dtype_of(adapter_dtype)
    selected = G.selected_layers(gm)
    if not selected:
        raise TargetError("no layer is selected: run find-linears before insert-lrqat")
    settings = plan_quantization(
        gm, selected, bits, group_size, overrides, quantizer=quantizer, damp=damp
    )
    adapters = adapter_options(selected, rank, alpha, overrides)
    io = io_dtypes(gm, adapters)
    report, params = [], 0
    for name, opts in progress(adapters.items(), "lrqat", total=len(adapters)):
        base = _grid_base(gm, name, settings.get(name))
        layer = LRQATLinear.from_base(
            base, train_scales=train_scales, adapter_dtype=dtype, io_dtype=io[name], **opts
        )
        G.swap_module(gm, name, layer)
        params += sum(p.numel() for p in layer.adapter_parameters())
        how = rounding(settings[name]) if name in settings else "IntLinear codes"
        report.append(
            f"{name}: -> LR-QAT(int{base.bits}, group {base.group_size}, {how}; rank {layer.rank}, "
            f"alpha {layer.alpha:g}, A [{layer.rank}, {layer.in_features}]"
            f"{', train_scales' if train_scales else ''})"
        )
    inserted = inline_selected(gm, selected)
    stats = {
        "quantized": len(settings),
        "rewritten": len(adapters),
        "nodes_inserted": inserted,
        "adapter_params": params,
    }
    return PassResult(gm, True, stats, report)
