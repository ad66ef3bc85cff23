"""expose-adapter-inputs: each MatMulNBits' zero points (and scales) become overridable inputs.

onnxruntime's adapters (``.onnx_adapter``, ``RunOptions.add_active_adapter``; onnxruntime-genai's
``Adapters`` and ``set_active_adapter``) override graph *inputs* only: an adapter's tensors are
appended to the feeds. So a base that adapters can swap keeps every MatMulNBits' integer zero
points (and with ``scales=true`` its scales) as initializers, the defaults, and lists them as
graph inputs too (an initializer that is also an input, IR >= 4). With no adapter active the
file computes what it did before, bit for bit; the codes stay constants, so onnxruntime prepacks
them as before.

Only integer (uint8, packed) zero points are exposed: float zero points and symmetric layers
have nothing an integer-zero adapter changes. Accuracy level 4 is refused (``check_level``):
onnxruntime's x64 kernel folds zero points and scales into its packed weights only when they are
constants, so at that level an overridden value is ignored without an error.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..errors import ExportError
from ..quant.formats import ADAPTER_INPUTS
from .file import adapter_tensors
from .passes import OnnxPassResult, OnnxPassSpec, register_onnx_pass


def check_adapter_inputs(value: str, accuracy_level: int, format: str) -> None:
    """``value`` is one of ``ADAPTER_INPUTS``, and a swappable base can run as asked."""
    if value not in ADAPTER_INPUTS:
        raise ExportError(f"adapter_inputs must be one of {ADAPTER_INPUTS}, got {value!r}")
    if value == "none":
        return
    if format != "matmulnbits":
        raise ExportError(
            f"adapter_inputs={value!r} needs format='matmulnbits' (adapters override MatMulNBits' "
            f"zero points), got format={format!r}"
        )
    if accuracy_level == 4:
        raise ExportError(
            f"adapter_inputs={value!r} cannot run at accuracy_level 4: onnxruntime's MatMulNBits "
            "(x64, int8 activations) packs zero points and scales into its weights only when they "
            "are constants, and ignores an adapter's without an error; use accuracy_level=0 "
            "(fp32 compute) for a base that adapters swap"
        )


def adapter_pass(value: str) -> OnnxPassSpec:
    """The pass that writes ``adapter_inputs=value``."""
    return OnnxPassSpec("expose-adapter-inputs", {"scales": value == "zeros+scales"})


@register_onnx_pass(
    "expose-adapter-inputs",
    "MatMulNBits' integer zero points (and scales) as overridable inputs, for swapped adapters",
)
def expose_adapter_inputs(model: onnx.ModelProto, *, scales: bool = False) -> OnnxPassResult:
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    present = {i.name for i in graph.input}
    added = []
    for name in adapter_tensors(model, scales):
        if name in present:
            continue
        tensor = inits[name]
        graph.input.append(helper.make_tensor_value_info(name, tensor.data_type, tensor.dims))
        added.append(name)
    if model.ir_version < 4:
        model.ir_version = 4
    report = [f"{len(added)} initializer(s) now overridable inputs"] if added else []
    return OnnxPassResult(model, bool(added), {"exposed": len(added)}, report)
