"""What a deployed model needs: ``Session`` (one ONNX file), ``DecoderSession`` (a KV-cache
generation loop over an onnxruntime-genai folder) and ``load``, which picks one.

Imports onnxruntime, and of the project only ONNX file reading and checking
(``runtime.onnx.file``, ``runtime.onnx.integrity``), file digests (``runtime.digests``), the format
vocabulary (``runtime.quant.formats``) and the errors: a deployed model needs no layer, pass or
exporter.
"""

from .generate import DecoderSession
from .load import check_integrity, load
from .session import Session

__all__ = ["DecoderSession", "Session", "check_integrity", "load"]
