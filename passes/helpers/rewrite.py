"""Helpers the rewrite passes share: rank checks, quantization plans, layer swaps."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.fx as fx

from ...runtime.errors import PolicyError
from ...runtime.layers.int_linear import IntLinear
from ...runtime.layers.linear_kinds import is_linear_module, weight_out_in
from ...runtime.progress import progress
from ...runtime.quant.formats import QUANTIZERS, check_choice
from ...runtime.quant.gptq import gptq
from ...runtime.quant.group import GROUP_HINT, check_layer, check_layers, count_nonfinite
from . import graph as G
from .select import TargetError, check_overrides, resolve_layer_options


def inline_selected(gm: fx.GraphModule, selected: dict) -> int:
    """Inline every call of every selected layer (now an adapter layer); returns the nodes
    inserted."""
    return sum(len(G.inline_call(gm, node)) for _, nodes in selected.values() for node in nodes)


def io_dtypes(gm: fx.GraphModule, names) -> dict[str, torch.dtype]:
    """Each layer's activation dtype, read before it is rewritten: its float weight's dtype, or
    for a base already quantized the dtype most of the model's float parameters have."""
    counts = Counter()
    for p in gm.parameters():
        if p.is_floating_point():
            counts[p.dtype] += p.numel()
    model = counts.most_common(1)[0][0] if counts else torch.float32
    out = {}
    for name in names:
        weight = getattr(gm.get_submodule(name), "weight", None)
        floating = isinstance(weight, torch.Tensor) and weight.is_floating_point()
        out[name] = weight.dtype if floating else model
    return out


def check_rank(name: str, rank, alpha, k: int, n: int) -> None:
    """rank in [1, min(in, out)].

    QA-LoRA's ``A`` is ``[rank, in / g]``: a rank above ``in / g`` adds no expressive power
    but trains fine (MiniLM at g=32 has in/g = 12 and is tuned at rank 16), so the
    limit stays min(in, out) there too.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise PolicyError(f"rank for layer {name!r} must be a positive integer, got {rank!r}")
    if rank > min(k, n):
        raise PolicyError(
            f"rank={rank} for layer {name!r} (in={k}, out={n}) exceeds min(in, out)={min(k, n)}; "
            f"use rank <= {min(k, n)} or an override for this layer"
        )
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise PolicyError(
            f"alpha for layer {name!r} must be a positive finite number, got {alpha!r}"
        )


def adapter_options(selected: dict, rank, alpha, overrides) -> dict[str, dict]:
    """Each selected layer's ``rank`` and ``alpha`` (overrides applied), checked against its
    shape."""
    options = {}
    for name, (op, _) in selected.items():
        opts = resolve_layer_options(name, {"rank": rank, "alpha": alpha}, overrides)
        check_rank(name, opts["rank"], opts["alpha"], op.in_features, op.out_features)
        options[name] = opts
    return options


def check_finite(gm: fx.GraphModule, names) -> None:
    """Every named float layer's weight is finite: an adapter over NaN/inf weights can only learn
    NaN.

    Raises one ``TargetError`` listing every such layer, before anything changes.
    """
    problems = []
    for name in names:
        module = gm.get_submodule(name)
        if not is_linear_module(module):
            continue  # already quantized: its own checks ran when it was made
        w = weight_out_in(module)
        bad = count_nonfinite(w)
        if bad:
            problems.append(
                f"{name}: weight has {bad} NaN/inf value(s) (shape [{w.shape[0]}, {w.shape[1]}])"
            )
    if problems:
        listing = "\n  ".join(problems)
        raise TargetError(
            f"{len(problems)} layer(s) have NaN/inf weights; an adapter over them would only "
            f"learn NaN:\n  {listing}\nFix the weights, or exclude these layers (exclude=[...])."
        )


def check_quantizer(quantizer, damp) -> None:
    check_choice(quantizer, QUANTIZERS, "quantizer")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0.0 < damp < 1.0:
        raise PolicyError(f"damp must be a number in (0, 1), got {damp!r}")


def plan_quantization(
    gm: fx.GraphModule, selected: dict, bits, group_size, overrides, *, quantizer="rtn", damp=0.01
) -> dict[str, dict]:
    """Per-layer {bits, group_size[, quantizer]} for every float layer in ``selected``.

    Raises listing every bad layer. ``quantizer="gptq"`` takes each layer's input second
    moment from the ``calibrate`` pass (``gm.meta[MOMENTS]``).
    """
    check_quantizer(quantizer, damp)
    check_overrides(overrides, list(selected))
    moments = gm.meta.get(G.MOMENTS) if quantizer == "gptq" else None
    if quantizer == "gptq" and moments is None:
        raise PolicyError(
            "quantizer='gptq' needs each layer's input statistics: run the calibrate pass first, "
            "i.e. compile(model, policy, calibration=[batch, ...])"
        )
    settings, problems = {}, []
    for name in selected:
        module = gm.get_submodule(name)
        if isinstance(module, IntLinear):
            continue  # already quantized by an earlier pass
        opts = resolve_layer_options(name, {"bits": bits, "group_size": group_size}, overrides)
        problem = check_layer(name, weight_out_in(module), opts["bits"], opts["group_size"])
        if problem:
            problems.append(problem)
        if moments is not None:
            if name not in moments:
                problems.append(
                    f"{name}: no calibration statistics (the calibration batches never reached it)"
                )
                continue
            opts = {**opts, "quantizer": gptq(moments[name], damp)}
        settings[name] = opts
    check_layers(problems, hint=GROUP_HINT)
    return settings


def rounding(opts: dict) -> str:
    """How a planned layer is rounded, for the report: the quantizer's name, or RTN."""
    return getattr(opts.get("quantizer"), "name", "RTN")


def quantize_layers(gm: fx.GraphModule, settings: dict[str, dict]) -> list[str]:
    """Swap in ``IntLinear`` for each planned layer; report lines."""
    report = []
    for name, opts in progress(settings.items(), "quantize", total=len(settings)):
        old = gm.get_submodule(name)
        new = IntLinear.from_float(old, **opts)
        G.swap_module(gm, name, new)
        how = rounding(opts)
        report.append(
            f"{name}: {type(old).__name__} -> IntLinear(int{opts['bits']}, group "
            f"{opts['group_size']}, {how})"
        )
    return report
