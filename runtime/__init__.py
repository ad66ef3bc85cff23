"""Runtime: what a training or deployed model needs at run time, in four rooms.

- ``quant/``: numbers in, numbers out: the format vocabulary (``formats``), group quantization
  and packing (``group``), NF4, GPTQ's rounding, LR-QAT's fixed-point grid;
- ``layers/``: the layer kinds a compiled model runs (integer bases, adapter layers), their torch
  custom ops, and the protocol every kind follows (``layers.protocol``);
- ``onnx/``: the exporter, the op translations (MatMulNBits, GatherBlockQuantized,
  GroupQueryAttention), the ONNX passes, file reading and inspection;
- ``serve/``: ``Session``, ``DecoderSession`` and ``load``: what a deployed model needs.

Beside them the errors (``errors``), the one atomic file writer (``files``), file digests
(``digests``) and progress bars.
Imports torch, numpy, onnx, onnxscript and onnxruntime only: never ``torch.fx``, the passes or
the API (compile-time helpers live in ``passes/helpers/``). ``load`` and ``Session`` import
onnxruntime when first used, so that the formats and layers do not.
"""

from .errors import AdapterError, LowRankError, ModelFileError, OutputError, PolicyError
from .layers import AdapterLayer, LoRALinear
from .layers.linear_kinds import is_conv1d, is_linear_module, linear_shape


def __getattr__(name: str):
    if name in ("Session", "load", "check_integrity"):
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
