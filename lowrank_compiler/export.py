"""``export_onnx``: a compiled, folded (or float) model to an ONNX file onnxruntime runs.

``format="matmulnbits"``: one ``com.microsoft::MatMulNBits`` node per integer layer, fed
by its stored codes, scales and zero points (packed integers, or floats after a
``zeros="float"`` fold; at 8 bits, which onnxruntime's CPU kernel refuses with float
zeros, the exact split form), bias inside the node; a ``"split"`` layer's exact correction
sits beside it. ``format="qdq"``: standard ONNX only (opset 21): UINT4 ``[K, N]``
codes, ``DequantizeLinear(axis=0, block_size=g)``, ``MatMul`` — the layout onnxruntime
fuses; float zero points go there in the exact split form. Nothing is re-quantized.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .api import compile_info
from .embeddings import check_embeddings, int4_embeddings
from .runtime.errors import ExportError
from .runtime.onnx.export import export_model
from .runtime.onnx.inspection import OnnxReport, inspect_onnx
from .runtime.quant.formats import EXPORT_FORMATS as FORMATS
from .trace import with_defaults


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_inputs,
    example_kwargs=None,
    format: str = "matmulnbits",
    accuracy_level: int = 0,
    dynamic: bool = True,
    embeddings: str = "float",
    embedding_group_size: int = 32,
) -> Path:
    """Write ``model`` to ``path`` (temporary name, checked, renamed); returns the path.

    example_inputs / example_kwargs: one call's arguments (batch and sequence >= 2 when
        ``dynamic``: those axes are then free in the file).
    accuracy_level: MatMulNBits' compute precision, 0 (fp32) to 4 (int8 activations,
        several times faster at batch 1). ``runtime.load`` keeps it for QDQ files too.
    embeddings: ``"float"`` (tables as the model holds them) or ``"int4"``: the vocabulary
        table as ``GatherBlockQuantized`` in groups of ``embedding_group_size``, one set of
        codes with a tied head (``quantize_embeddings``; the model is unchanged afterwards).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx expects a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        if not example_kwargs:
            raise ExportError(
                "export_onnx needs example_inputs=(...) (or example_kwargs): one call's arguments, "
                "batch and sequence >= 2"
            )
        args = ()
    else:
        args = (
            example_inputs
            if isinstance(example_inputs, tuple)
            else (tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,))
        )
    check_embeddings(embeddings, embedding_group_size, format)
    kwargs = with_defaults(model, dict(example_kwargs or {}))
    info = compile_info(model)
    targets = [op.name for op in info.linears if op.status == "selected"] if info else None
    with int4_embeddings(model, group_size=embedding_group_size, enabled=embeddings == "int4"):
        return export_model(
            model,
            path,
            args=args,
            kwargs=kwargs,
            fmt=format,
            accuracy_level=accuracy_level,
            dynamic=dynamic,
            targets=targets,
        )


__all__ = ["FORMATS", "OnnxReport", "export_onnx", "inspect_onnx"]
