"""Runtime layer: what a training or deployed model needs at run time: quantization
formats and packing, the int_linear op and its ONNX translation, integer and adapter
layers, ONNX export, lowering and inspection, the onnxruntime session, errors.

Imports torch, numpy, onnx, onnxscript and onnxruntime only: never ``torch.fx``, the
passes or the API (compile-time helpers live in ``passes/helpers/``).
"""

from .errors import AdapterError, LowRankError, ModelFileError, OutputError, PolicyError
from .linear_kinds import is_conv1d, is_linear_module, linear_shape
from .lora import AdapterLayer, LoRALinear
from .session import Session, load

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
