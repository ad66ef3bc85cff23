"""sha256 digests of the files a folder holds, recorded when it is written and checked on
request (``runtime.load(folder, verify=True)``): a flipped bit anywhere names its file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import ModelFileError

CHUNK = 1 << 24  # 16 MiB reads: hashing runs at the disk's or the hash's speed, not Python's


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def folder_digests(folder: Path, names: list[str]) -> dict[str, str]:
    """``{name: sha256}`` of the named files in ``folder``."""
    return {name: file_sha256(folder / name) for name in names}


def check_folder_digests(folder: Path, recorded: dict | None, record_name: str) -> None:
    """Raise ``ModelFileError`` naming the first file whose bytes are not those recorded."""
    if not recorded:
        raise ModelFileError(
            f"{str(folder)!r}: its {record_name} records no file digests (written by an older "
            "version?); write the folder again, or load it with verify=False"
        )
    for name, want in recorded.items():
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelFileError(
                f"{str(folder)!r}: {record_name} names a file outside it: {name!r}"
            )
        if not path.is_file():
            raise ModelFileError(f"{str(path)!r} is missing (its digest is in {record_name})")
        got = file_sha256(path)
        if got != want:
            raise ModelFileError(
                f"{str(path)!r} changed since it was written: sha256 {got[:16]}... where "
                f"{record_name} records {want[:16]}...; write the folder again or restore the file"
            )
