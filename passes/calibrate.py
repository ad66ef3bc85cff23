"""calibrate: run the float model on the calibration batches and record each selected
layer's input second moment ``H = E[x x^T]`` (``runtime.calibrate``) for GPTQ.

An analysis pass: the graph is not changed; the statistics go to
``gm.meta["lowrank_compiler.moments"]``, where ``quantize`` and ``insert-qalora`` with
``quantizer="gptq"`` read them. The batches are the ones ``compile(..., calibration=...)``
was given (``gm.meta["lowrank_compiler.calibration"]``); they are not part of the
pipeline string, so a pipeline with ``calibrate`` needs them at every run.
"""

from __future__ import annotations

import torch.fx as fx

from ..runtime.errors import PolicyError
from .helpers import graph as G
from .helpers.moments import input_moments
from .helpers.select import TargetError
from .registry import PassResult, register_pass


@register_pass("calibrate", "run the model on calibration batches; record selected layers' input statistics")
def calibrate(gm: fx.GraphModule) -> PassResult:
    batches = gm.meta.get(G.CALIBRATION)
    if batches is None:
        raise PolicyError("calibrate needs calibration batches: compile(model, policy, calibration=[batch, ...]), "
                          "each batch what the model takes (a dict of keyword arguments, a tuple, or a tensor)")
    selected = G.selected_layers(gm)
    if not selected:
        raise TargetError("no layer is selected: run find-linears before calibrate")
    model = G.model_of(gm) or gm
    layers = {name: gm.get_submodule(name) for name in selected}
    moments, n = input_moments(model, layers, batches)
    if n == 0:
        raise PolicyError("the calibration batches are empty: pass at least one batch")
    gm.meta[G.MOMENTS] = moments
    missed = sorted(set(layers) - set(moments))
    report = [f"{name}: H [{h.shape[0]}, {h.shape[1]}]" for name, h in moments.items()]
    report += [f"{name}: never called by the calibration batches" for name in missed]
    return PassResult(gm, False, {"batches": n, "layers": len(moments), "missed": len(missed)}, report)
