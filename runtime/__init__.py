"""Runtime layer: quantization formats, the int_linear op and its ONNX translation, integer
and adapter layers, ONNX export/lowering/inspection, the onnxruntime session, name
patterns, graph helpers, errors.

Imports torch, numpy, onnx, onnxscript and onnxruntime only: never the passes or the API.
"""

from .errors import (
    AdapterError,
    LintError,
    LowRankError,
    ModelFileError,
    OutputError,
    PassError,
    PassInputError,
    PipelineError,
    PolicyError,
    TargetError,
    TraceError,
)
from .layers import AdapterLayer, LoRALinear
from .linear import is_conv1d, is_linear_module, linear_shape
from .session import Session, load

__all__ = [
    "AdapterError",
    "AdapterLayer",
    "LintError",
    "LoRALinear",
    "LowRankError",
    "ModelFileError",
    "OutputError",
    "PassError",
    "PassInputError",
    "PipelineError",
    "PolicyError",
    "TargetError",
    "TraceError",
    "is_conv1d",
    "is_linear_module",
    "linear_shape",
    "load",
    "Session",
]
