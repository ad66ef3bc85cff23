"""insert-lora: wrap every selected linear layer in a LoRA adapter (``runtime.layers.LoRALinear``).

For a selected layer with weight ``[N, K]`` the pass swaps in
``LoRALinear(base, rank, alpha, dropout)``: frozen base, ``A: [r, K]`` random,
``B: [N, r]`` zero, output ``base(x) + (alpha/r) B A dropout(x)`` (bias untouched), and
inlines the adapter's ops into the graph so dumps show them. ``A`` and ``B`` are
``adapter_dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``); in a model of another dtype the
adapter casts its input into it and its output back.

``overrides`` maps a name pattern to ``{"rank": .., "alpha": ..}`` for the layers it
matches; later patterns win. ``bits``/``group_size`` keys are accepted (the policy
shares its overrides with the quantizing passes) and ignored here. Layers with NaN/inf
weights are all listed in one error before anything changes.
"""

from __future__ import annotations

import torch.fx as fx

from ..runtime.layers.lora import LoRALinear
from ..runtime.quant.formats import adapter_dtype as adapter_dtype_of
from ..runtime.quant.formats import check_dropout
from .helpers import graph as G
from .helpers.rewrite import check_finite, check_rank, inline_selected
from .helpers.select import TargetError, check_overrides, resolve_layer_options
from .registry import PassResult, register_pass


@register_pass(
    "insert-lora", "wrap selected linear layers in LoRA adapters (frozen base, trainable A, B)"
)
def insert_lora(
    gm: fx.GraphModule,
    *,
    rank=16,
    alpha=32.0,
    dropout=0.0,
    adapter_dtype="float32",
    overrides=None,
) -> PassResult:
    check_dropout(dropout)
    dtype = adapter_dtype_of(adapter_dtype)
    selected = G.selected_layers(gm)
    if not selected:
        raise TargetError("no layer is selected: run find-linears before insert-lora")
    check_overrides(overrides, list(selected))
    check_finite(gm, selected)
    layers: dict[str, LoRALinear] = {}
    for name, (op, _) in selected.items():
        opts = resolve_layer_options(name, {"rank": rank, "alpha": alpha}, overrides)
        check_rank(name, opts["rank"], opts["alpha"], op.in_features, op.out_features)
        layers[name] = LoRALinear.from_linear(
            gm.get_submodule(name), dropout=dropout, adapter_dtype=dtype, **opts
        )
    added = 0
    for name, layer in layers.items():
        G.swap_module(gm, name, layer)
        added += sum(p.numel() for p in layer.adapter_parameters())
    inserted = inline_selected(gm, selected)
    return PassResult(
        gm, True, {"rewritten": len(layers), "nodes_inserted": inserted, "adapter_params": added}
    )
