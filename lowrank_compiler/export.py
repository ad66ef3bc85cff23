"""``export_onnx``: a compiled, folded (or float) model to an ONNX file onnxruntime runs.

``format="matmulnbits"``: one ``com.microsoft::MatMulNBits`` node per integer layer, fed
by its stored codes, scales and zero points (packed integers, or floats after a
``zeros="float"`` fold; at 8 bits, which onnxruntime's CPU kernel refuses with float
zeros, the exact split form), bias inside the node; a ``"split"`` layer's exact correction
sits beside it. ``format="qdq"``: standard ONNX only (opset 21): UINT4 ``[K, N]``
codes, ``DequantizeLinear(axis=0, block_size=g)``, ``MatMul`` — the layout onnxruntime
fuses; float zero points go there in the exact split form. Nothing is re-quantized.

The export is the same as the ``export-onnx`` pass's (``passes.helpers.export.export_file``).
A compiled model exports with the inputs it was traced with unless others are given, and
records the layers its policy selected. ``dump_dir`` writes the ONNX stage's numbered dumps
(the graph torch gave, then one per ONNX pass), after any dumps already there.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .api import compile_info
from .dumps import DumpWriter
from .passes.helpers.export import export_file
from .passes.helpers.graph import selected_targets
from .runtime.errors import ExportError
from .runtime.files import check_dir
from .runtime.onnx.inspection import OnnxReport, inspect_onnx
from .runtime.quant.formats import EXPORT_FORMATS as FORMATS
from .trace import with_defaults


def _call(model: nn.Module, example_inputs, example_kwargs) -> tuple[tuple, dict]:
    """The call to trace: the one given, else the one ``compile`` traced
    (``CompileInfo.example``)."""
    if example_inputs is None and not example_kwargs:
        info = compile_info(model)
        if info is None or info.example is None:
            raise ExportError(
                "export_onnx needs example_inputs=(...) (or example_kwargs): one call's "
                "arguments, batch and sequence >= 2 (a model compiled with example_inputs "
                "exports with those)"
            )
        return info.example
    if example_inputs is None:
        args = ()
    elif isinstance(example_inputs, tuple):
        args = example_inputs
    else:
        args = tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,)
    return args, with_defaults(model, dict(example_kwargs or {}))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_inputs=None,
    example_kwargs=None,
    format: str = "matmulnbits",
    accuracy_level: int = 0,
    dynamic: bool = True,
    embeddings: str = "float",
    embedding_group_size: int = 32,
    dtype: str = "float32",
    dump_dir=None,
) -> Path:
    """Write ``model`` to ``path`` (temporary name, checked, renamed); returns the path.

    example_inputs / example_kwargs: one call's arguments (batch and sequence >= 2 when
        ``dynamic``: those axes are then free in the file); by default the call ``compile``
        traced the model with.
    accuracy_level: MatMulNBits' compute precision, 0 (fp32) to 4 (int8 activations,
        several times faster at batch 1). ``runtime.load`` keeps it for QDQ files too.
    embeddings: ``"float"`` (tables as the model holds them) or ``"int4"``: the vocabulary
        table as ``GatherBlockQuantized`` in groups of ``embedding_group_size``, one set of
        codes with a tied head (``quantize_embeddings``; the model is unchanged afterwards).
    dtype: the file's float type: ``"float32"`` (default; a bfloat16 or float16 model's file
        then computes what the model computes in float32) or ``"float16"`` (half the float
        bytes; where onnxruntime has the kernels, else an ``ExportError`` says which).
    dump_dir: write ``NN-<pass>.txt`` / ``.html`` for the ONNX stage there (module docstring).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx expects a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = _call(model, example_inputs, example_kwargs)
    info = compile_info(model)
    dump = None
    if dump_dir is not None:
        check_dir(Path(dump_dir), "dump_dir")
        dump = DumpWriter(Path(dump_dir)).onnx
    return export_file(
        model,
        path,
        args=args,
        kwargs=kwargs,
        targets=selected_targets(info.linears) if info else None,
        format=format,
        accuracy_level=accuracy_level,
        dynamic=dynamic,
        embeddings=embeddings,
        embedding_group_size=embedding_group_size,
        dtype=dtype,
        dump=dump,
    )


__all__ = ["FORMATS", "OnnxReport", "export_onnx", "inspect_onnx"]
