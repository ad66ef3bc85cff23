"""insert-lora: wrap every selected linear layer in a LoRA adapter (``runtime.layers.LoRALinear``).

For a selected layer with weight ``[N, K]`` the pass swaps in
``LoRALinear(base, rank, alpha, dropout)``: frozen base, ``A: [r, K]`` random,
``B: [N, r]`` zero, output ``base(x) + (alpha/r) B A dropout(x)`` (bias untouched), and
inlines the adapter's ops into the graph so dumps show them.

``overrides`` maps a name pattern to ``{"rank": .., "alpha": ..}`` for the layers it
matches; later patterns win. ``bits``/``group_size`` keys are accepted (the policy
shares its overrides with the quantizing passes) and ignored here.
"""

from __future__ import annotations

import torch.fx as fx

from ..runtime import graph as G
from ..runtime.errors import PolicyError, TargetError
from ..runtime.layers import LoRALinear
from ..runtime.select import check_overrides, resolve_layer_options
from .registry import PassResult, register_pass

def check_rank(name: str, rank, alpha, k: int, n: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise PolicyError(f"rank for layer {name!r} must be a positive integer, got {rank!r}")
    if rank > min(k, n):
        raise PolicyError(
            f"rank={rank} for layer {name!r} (in={k}, out={n}) exceeds min(in, out)={min(k, n)}; "
            f"use rank <= {min(k, n)} or an override for this layer"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise PolicyError(f"alpha for layer {name!r} must be a positive number, got {alpha!r}")


@register_pass("insert-lora", "wrap selected linear layers in LoRA adapters (frozen base, trainable A, B)")
def insert_lora(gm: fx.GraphModule, *, rank=16, alpha=32.0, dropout=0.0, overrides=None) -> PassResult:
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise PolicyError(f"dropout must be in [0, 1), got {dropout!r}")
    nodes = G.linear_nodes(gm, selected_only=True)
    if not nodes:
        raise TargetError("no layer is selected: run find-linears before insert-lora")
    selected = list(dict.fromkeys(n.meta[G.LINEAR].name for n in nodes))
    check_overrides(overrides, selected)
    layers: dict[str, LoRALinear] = {}
    for name in selected:
        op = next(n.meta[G.LINEAR] for n in nodes if n.meta[G.LINEAR].name == name)
        opts = resolve_layer_options(name, {"rank": rank, "alpha": alpha}, overrides)
        check_rank(name, opts["rank"], opts["alpha"], op.in_features, op.out_features)
        layers[name] = LoRALinear.from_linear(gm.get_submodule(name), dropout=dropout, **opts)
    added = 0
    for name, layer in layers.items():
        G.swap_module(gm, name, layer)
        added += sum(p.numel() for p in layer.adapter_parameters())
    inserted = 0
    for node in nodes:
        inserted += len(G.inline_call(gm, node))
    return PassResult(gm, True, {"rewritten": len(layers), "nodes_inserted": inserted, "adapter_params": added})
