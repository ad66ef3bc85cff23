"""fold: replace every adapter layer by the plain layer that computes the same thing.

- QA-LoRA (``runtime.qalora``): an ``IntLinear`` with the same codes and scales and
  zero points moved by the adapter; ``zeros`` = ``"split"`` (integer zeros + exact
  correction), ``"float"`` (real zeros) or ``"round"`` (integer zeros alone, lossy).
  Layers trained with ``zero_point="int"`` always fold to integer zeros, exactly. A
  ``"split"`` layer whose correction is exactly zero (every moved zero point an integer,
  e.g. an adapter that has not trained) gets none: it is the plain integer layer.
- LR-QAT (``runtime.lrqat``): an ``IntLinear`` with the trained codes, the (trained)
  scales and the same integer zero points, whatever ``zeros`` says; bit-identical to the
  training forward.
- LoRA over a float base: an ``nn.Linear`` with ``W + s B A``.
- LoRA over NF4 (QLoRA): dequantize, add, requantize to ``IntLinear(bits, group_size)``,
  the peers' lossy merge.

Adapters holding NaN/inf values (a diverged training run) are refused, all listed,
before anything is folded. For each layer the pass measures, on a seeded random probe
batch, the folded layer's output against the adapter layer's:
``max |y_fold - y| / max |y|`` (stats ``rel_err``). For QA-LoRA, whose fold keeps the
codes and scales, the difference is computed exactly through the group sums (float64, every
output) and ``max |y|`` on 256 of the outputs: a fold costs O(N K / g), not two dequantizations.
The inlined adapter ops collapse back into one ``call_module`` per call.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..runtime.layers.int_linear import IntLinear
from ..runtime.layers.lora import AdapterLayer
from ..runtime.layers.lrqat import LRQATLinear
from ..runtime.layers.qalora import QALoRALinear
from ..runtime.progress import progress
from ..runtime.quant.formats import FOLD_ZEROS, check_bits, check_choice
from ..runtime.quant.group import group_sum
from .helpers import graph as G
from .helpers.select import TargetError
from .registry import PassResult, register_pass


def _probe_error(layer: torch.nn.Module, folded: torch.nn.Module, rows: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, layer.in_features, generator=g).to(
        layer.lora_A.device, layer.lora_A.dtype
    )
    if _same_codes(layer, folded):
        return _group_error(layer, folded, x)
    was = layer.training
    layer.eval()  # no dropout in the comparison
    with torch.no_grad():
        y = layer(x)
        y_fold = folded(x)
    layer.train(was)
    return ((y_fold - y).abs().max() / y.abs().max().clamp(min=1e-30)).item()


def _same_codes(layer: torch.nn.Module, folded: torch.nn.Module) -> bool:
    return (
        isinstance(layer, QALoRALinear)
        and isinstance(folded, IntLinear)
        and folded.group_size == layer.base.group_size
        and folded.bits == layer.base.bits
        and _same(folded.qweight, layer.base.qweight)
        and _same(folded.scales, layer.base.scales)
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same tensor (the fold shares it: O(1)), or an equal one."""
    shared = (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )
    return shared or torch.equal(a, b)


def _group_error(
    layer: QALoRALinear, folded: IntLinear, x: torch.Tensor, channels: int = 256
) -> float:
    """The same ratio for a QA-LoRA fold, without dequantizing the layer twice: the codes and
    scales are shared, so ``y_fold - y = group_sum(x) @ E^T`` with ``E`` [N, L] the change of
    the group-constant part (``IntLinear.group_offset``) minus the adapter's
    (``QALoRALinear.group_delta``), computed in float64 for every output. ``max |y|`` is taken
    over ``channels`` evenly spaced outputs of the adapter layer."""
    base = layer.base
    delta = layer.group_delta()  # (N, L)
    e = folded.group_offset() - base.group_offset() - delta  # (N, L)
    sums = group_sum(x.double(), base.group_size)  # (M, L)
    diff = (sums @ e.T).abs().max()  # (M, N) -> ()
    index = (
        torch.linspace(0, base.out_features - 1, min(channels, base.out_features)).round().long()
    )
    index = index.to(base.scales.device)
    with torch.no_grad():
        y = base.rows(index)(x).double() + sums @ delta[index].T  # (M, channels)
    return (diff / y.abs().max().clamp(min=1e-30)).item()


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
    check_choice(zeros, FOLD_ZEROS, "zeros")
    check_bits(bits)
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
        if isinstance(layer, (QALoRALinear, LRQATLinear)):
            folded = layer.folded_layer(zeros)
        else:
            folded = layer.folded_layer(bits=bits, group_size=group_size)
        errors[name] = _probe_error(layer, folded, probe, seed)
        G.swap_module(gm, name, folded)
        form = folded.describe()["zeros"] if hasattr(folded, "describe") else "float"
        report.append(
            f"{name}: {layer.describe()['kind']} -> {type(folded).__name__}"
            f"({form} zeros)  rel_err {errors[name]:.3e}"
        )
    for (name, _), nodes in calls.items():
        G.collapse_call(gm, name, nodes)
    stats = {"folded": len(names), "max_rel_err": max(errors.values()), "rel_err": errors}
    return PassResult(gm, True, stats, report)
