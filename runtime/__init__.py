"""Runtime layer: what a training or deployed model needs at run time: quantization
formats and packing, the int_linear op and its ONNX translation, integer and adapter
layers, ONNX export, lowering and inspection, the onnxruntime session, errors.

Imports torch, numpy, onnx, onnxscript and onnxruntime only: never ``torch.fx``, the
passes or the API (compile-time helpers live in ``passes/helpers/``). ``load`` and
``Session`` import onnxruntime when first used, so that the formats and layers do not.
"""

from .errors import AdapterError, LowRankError, ModelFileError, OutputError, PolicyError
from .layers.linear_kinds import is_conv1d, is_linear_module, linear_shape
from .layers.lora import AdapterLayer, LoRALinear


def __getattr__(name: str):
    if name in ("Session", "load"):
        from . import serve

        return getattr(serve, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdapterError",
    "AdapterLayer",
    "LoRALinear",
    "LowRankError",
    "ModelFileError",
    "OutputError",
    "PolicyError",
    "is_conv1d",
    "is_linear_module",
    "linear_shape",
    "load",
    "Session",
]
