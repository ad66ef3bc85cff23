"""The one way a model becomes an ONNX file: ``export_file``, for ``lrc.export_onnx`` and the
``export-onnx`` pass alike.

It checks the options, casts the model's floats to the file's ``dtype`` and swaps the vocabulary
tables to INT4 for the length of the export when asked (``runtime.onnx.dtypes.floats_as``,
``embeddings.int4_embeddings``), and hands the model to the runtime's exporter
(``runtime.onnx.export.export_model``), whose ONNX stage reports each pass to ``dump``.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ...runtime.onnx.dtypes import cast_inputs, export_dtype, floats_as
from ...runtime.onnx.export import export_model
from ...runtime.onnx.passes import DumpFn
from .embeddings import check_embeddings, int4_embeddings


def export_file(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    args: tuple,
    kwargs: dict,
    targets: list[str] | None,
    format: str = "matmulnbits",
    accuracy_level: int = 0,
    dynamic: bool = True,
    embeddings: str = "float",
    embedding_group_size: int = 32,
    dtype: str = "float32",
    dump: DumpFn | None = None,
) -> Path:
    """Write ``model(*args, **kwargs)`` to ``path`` (module docstring); returns the path.

    targets: the layers the policy selected, recorded in the file (``None``: every linear layer).
    embeddings: ``"float"`` or ``"int4"`` (``GatherBlockQuantized`` in groups of
        ``embedding_group_size``; the model is unchanged afterwards).
    dtype: the file's float type, ``"float32"`` or ``"float16"`` (``runtime.onnx.dtypes``).
    """
    check_embeddings(embeddings, embedding_group_size, format)
    torch_dtype = export_dtype(dtype, format)
    with (
        int4_embeddings(model, group_size=embedding_group_size, enabled=embeddings == "int4"),
        floats_as(model, torch_dtype),  # the INT4 tables' scales too
    ):
        return export_model(
            model,
            path,
            args=cast_inputs(args, torch_dtype),
            kwargs=cast_inputs(kwargs, torch_dtype),
            fmt=format,
            accuracy_level=accuracy_level,
            dynamic=dynamic,
            targets=targets,
            dump=dump,
        )
