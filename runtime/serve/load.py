"""``load(path)``: the session that runs what the exporters wrote (a file or a decoder folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..digests import check_folder_digests
from ..errors import ModelFileError
from ..onnx.integrity import verify_file
from ..quant.formats import FOLDER_RECORD
from .generate import DecoderSession
from .session import Session


def load(
    path: str | os.PathLike,
    providers: list[str] | None = None,
    *,
    accuracy_level: int | None = None,
    threads: int | None = None,
    verify: bool = False,
) -> Session | DecoderSession:
    """A ``Session`` for an ONNX file; for a folder ``export_genai`` wrote (``genai_config.json``,
    ``model.onnx``), a ``DecoderSession``: the KV-cache loop, with ``.generate``.

    verify: first recompute the sha256 recorded when it was written (a file: of its weights, in
    its metadata; a folder: of every file, in ``lowrank_compiler.json``) and raise
    ``ModelFileError`` naming a file whose bytes changed (``check_integrity``)."""
    if verify:
        check_integrity(path)
    if Path(path).is_dir():
        return DecoderSession(path, providers, threads=threads, accuracy_level=accuracy_level)
    return Session(path, providers, accuracy_level, threads)


def check_integrity(path: str | os.PathLike) -> list[str]:
    """Check what ``load(path, verify=True)`` checks; returns the names of the files checked."""
    path = Path(path)
    if not path.is_dir():
        verify_file(path)
        return [path.name]
    try:
        record = json.loads((path / FOLDER_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(
            f"{str(path)!r}: cannot read its {FOLDER_RECORD} ({e}); only folders export_genai "
            "wrote can be verified"
        ) from None
    digests = record.get("sha256") if isinstance(record, dict) else None
    check_folder_digests(path, digests, FOLDER_RECORD)
    return sorted(digests)
