"""fold: replace every adapter layer by the plain layer that computes the same thing.

Each adapter layer folds itself (``folded_layer(FoldForm(zeros, bits, group_size))``, the layer
protocol of ``runtime.layers.protocol``); the built-in kinds give:

- QA-LoRA (``layers.qalora``): an ``IntLinear`` with the same codes and scales and
  zero points moved by the adapter; ``zeros`` = ``"split"`` (integer zeros + exact
  correction), ``"float"`` (real zeros) or ``"round"`` (integer zeros alone, lossy).
  Layers trained with ``zero_point="int"`` always fold to integer zeros, exactly. A
  ``"split"`` layer whose correction is exactly zero (every moved zero point an integer,
  e.g. an adapter that has not trained) gets none: it is the plain integer layer.
- LR-QAT (``layers.lrqat``): an ``IntLinear`` with the trained codes, the (trained)
  scales and the same integer zero points, whatever ``zeros`` says; bit-identical to the
  training forward.
- LoRA over a float base: an ``nn.Linear`` with ``W + s B A``.
- LoRA over NF4 (QLoRA): dequantize, add, requantize to ``IntLinear(bits, group_size)``,
  the peers' lossy merge.

Adapters holding NaN/inf values (a diverged training run) are refused, all listed,
before anything is folded. For each layer the pass measures, on a seeded random probe
batch, the folded layer's output against the adapter layer's, ``layer.fold_error``:
``max |y_fold - y| / max |y|`` (stats ``rel_err``; QA-LoRA computes it through the group sums,
so a fold costs O(N K / g), not two dequantizations). The inlined adapter ops collapse back
into one ``call_module`` per call.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..runtime.layers.protocol import AdapterLayer, FoldForm
from ..runtime.progress import progress
from .helpers import graph as G
from .helpers.select import TargetError
from .registry import PassResult, register_pass


def _probe(layer: AdapterLayer, rows: int, seed: int) -> torch.Tensor:
    """A seeded random batch ``(rows, K)`` on the adapter's device, in the activations' dtype."""
    like = next(layer.adapter_parameters())
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, layer.in_features, generator=g).to(like.device, layer.io_dtype)


def _check_adapters_finite(gm: fx.GraphModule, names: list[str]) -> None:
    """A diverged training run leaves NaN/inf adapters; folding them would poison the integer
    model."""
    bad = [
        f"{name}.{pname}"
        for name in names
        if isinstance(gm.get_submodule(name), AdapterLayer)
        for pname, p in gm.get_submodule(name).named_parameters()
        if p.is_floating_point() and not torch.isfinite(p).all()
    ]
    if bad:
        raise TargetError(
            f"{len(bad)} adapter weight(s) hold NaN/inf values (did training diverge?): "
            f"{', '.join(bad[:6])}{', ...' if len(bad) > 6 else ''}; nothing was folded"
        )


@register_pass(
    "fold", "fold trained adapters into their base layers (QA-LoRA: into the zero points, exactly)"
)
def fold_adapters(
    gm: fx.GraphModule, *, zeros="split", bits=4, group_size=32, probe=16, seed=0
) -> PassResult:
    form = FoldForm(zeros, bits, group_size)
    calls = G.inlined_calls(gm)
    direct = [
        n.target
        for n in gm.graph.nodes  # graphs built without inlining (adapter_graph)
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), AdapterLayer)
    ]
    names = list(dict.fromkeys([name for name, _ in calls] + direct))
    if not names:
        raise TargetError(
            "the graph holds no adapter layer to fold (compile with an adapter method first)"
        )
    _check_adapters_finite(gm, names)
    errors, report = {}, []
    for name in progress(names, "fold", total=len(names)):
        layer = gm.get_submodule(name)
        if not isinstance(layer, AdapterLayer):
            raise TargetError(f"{name} is a {type(layer).__name__}, not an adapter layer")
        folded = layer.folded_layer(form)
        errors[name] = layer.fold_error(folded, _probe(layer, probe, seed))
        G.swap_module(gm, name, folded)
        stored = folded.describe().get("zeros", "float") if hasattr(folded, "describe") else "float"
        report.append(
            f"{name}: {layer.describe()['kind']} -> {type(folded).__name__}"
            f"({stored} zeros)  rel_err {errors[name]:.3e}"
        )
    for (name, _), nodes in calls.items():
        G.collapse_call(gm, name, nodes)
    stats = {"folded": len(names), "max_rel_err": max(errors.values()), "rel_err": errors}
    return PassResult(gm, True, stats, report)
