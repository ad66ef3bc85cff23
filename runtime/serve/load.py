"""``load(path)``: the session that runs what the exporters wrote (a file or a decoder folder)."""

from __future__ import annotations

import os
from pathlib import Path

from .generate import DecoderSession
from .session import Session


def load(
    path: str | os.PathLike,
    providers: list[str] | None = None,
    *,
    accuracy_level: int | None = None,
    threads: int | None = None,
) -> Session | DecoderSession:
    """A ``Session`` for an ONNX file; for a folder ``export_genai`` wrote (``genai_config.json``,
    ``model.onnx``), a ``DecoderSession``: the KV-cache loop, with ``.generate``."""
    if Path(path).is_dir():
        return DecoderSession(path, providers, threads=threads, accuracy_level=accuracy_level)
    return Session(path, providers, accuracy_level, threads)
