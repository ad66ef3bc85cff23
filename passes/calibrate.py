"""calibrate: run the float model on the calibration batches and record each selected
layer's input second moment ``H = E[x x^T]`` (``helpers.moments``) for GPTQ.

An analysis pass: the graph is not changed; the statistics go to
``gm.meta["lowrank_compiler.moments"]``, where ``quantize`` and ``insert-qalora`` with
``quantizer="gptq"`` read them. The batches are the ones ``compile(..., calibration=...)``
was given (``gm.meta["lowrank_compiler.calibration"]``). The pipeline string records what they
were, ``calibrate{batches=16,sha256=...}`` (``helpers.moments.calibration_record``), and the
pass refuses other data, so a ``pipeline.txt`` says what GPTQ ran on and reruns only on that.
"""

from __future__ import annotations

import torch.fx as fx

from ..runtime.errors import PolicyError
from .helpers import graph as G
from .helpers.moments import calibration_record, input_moments
from .helpers.select import TargetError
from .registry import PassResult, register_pass


@register_pass(
    "calibrate", "run the model on calibration batches; record selected layers' input statistics"
)
def calibrate(
    gm: fx.GraphModule, *, batches: int | None = None, sha256: str | None = None
) -> PassResult:
    data = gm.meta.get(G.CALIBRATION)
    if data is None:
        raise PolicyError(
            "calibrate needs calibration batches: compile(model, policy, calibration=[batch, "
            "...]), "
            "each batch what the model takes (a dict of keyword arguments, a tuple, or a tensor)"
        )
    if batches is not None or sha256 is not None:
        given = calibration_record(data)
        if (batches, sha256) != (given["batches"], given["sha256"]):
            raise PolicyError(
                f"the calibration data ({given['batches']} batches, sha256 {given['sha256'][:12]}) "
                "is "
                f"not what this pipeline recorded (batches={batches}, sha256 {str(sha256)[:12]}); "
                f"pass the same batches, or drop the options to calibrate on new data"
            )
    selected = G.selected_layers(gm)
    if not selected:
        raise TargetError("no layer is selected: run find-linears before calibrate")
    model = G.model_of(gm) or gm
    layers = {name: gm.get_submodule(name) for name in selected}
    moments, n = input_moments(model, layers, data)
    if n == 0:
        raise PolicyError("the calibration batches are empty: pass at least one batch")
    gm.meta[G.MOMENTS] = moments
    missed = sorted(set(layers) - set(moments))
    report = [f"{name}: H [{h.shape[0]}, {h.shape[1]}]" for name, h in moments.items()]
    report += [f"{name}: never called by the calibration batches" for name in missed]
    return PassResult(
        gm, False, {"batches": n, "layers": len(moments), "missed": len(missed)}, report
    )
