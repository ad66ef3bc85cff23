"""quantize: replace every selected linear layer by an ``IntLinear`` (no adapter).

Asymmetric min-max per output row and group of ``group_size`` input columns, ``bits``
in {2, 3, 4, 8} (``runtime.quant.group``), rounded to nearest (``quantizer="rtn"``) or by
GPTQ (``quantizer="gptq"``, ``runtime.quant.gptq``: needs the ``calibrate`` pass before it). The
post-training baseline, and the first half of
what ``insert-qalora`` does. Every layer that cannot be quantized (input width not
divisible by the group, group wider than the layer, NaN/inf weights) is listed in one
error before anything changes. The call nodes keep their place: ``IntLinear`` is a leaf.
"""

from __future__ import annotations

import torch.fx as fx

from .helpers import graph as G
from .helpers.rewrite import plan_quantization, quantize_layers
from .helpers.select import TargetError
from .registry import PassResult, register_pass


@register_pass(
    "quantize",
    "replace selected linear layers by group-quantized IntLinear (RTN or GPTQ, no adapter)",
)
def quantize(
    gm: fx.GraphModule, *, bits=4, group_size=32, quantizer="rtn", damp=0.01, overrides=None
) -> PassResult:
    selected = G.selected_layers(gm)
    if not selected:
        raise TargetError("no layer is selected: run find-linears before quantize")
    settings = plan_quantization(
        gm, selected, bits, group_size, overrides, quantizer=quantizer, damp=damp
    )
    report = quantize_layers(gm, settings)
    return PassResult(gm, bool(settings), {"quantized": len(settings)}, report)
