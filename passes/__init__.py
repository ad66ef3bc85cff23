"""Rewrite passes, one per module. Importing this package registers them all."""

from . import calibrate, export_onnx, find_linears, fold, insert_lora, insert_qalora, insert_qlora, quantize  # noqa: F401  (registration)
from .registry import PassInfo, PassResult, get_pass, register_pass, registered_passes

__all__ = ["PassInfo", "PassResult", "get_pass", "register_pass", "registered_passes"]
