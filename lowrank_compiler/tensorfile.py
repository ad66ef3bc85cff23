"""Tensor files: safetensors written atomically, and read back only after they are checked.

Nothing here unpickles: a safetensors file is a JSON header and raw bytes. The writer
returns the file's sha256, which the caller records in the JSON that names the file; the
reader compares it before parsing a byte, so a truncated or altered file is a clear
``AdapterError``, never a parser's exception. Then every expected tensor must be there,
with its dtype and shape, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .runtime.errors import AdapterError
from .runtime.files import write_atomic


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def spec_of(t: torch.Tensor) -> str:
    """``"float32[8, 2]"``: what a JSON record says about one tensor."""
    return f"{dtype_name(t.dtype)}{list(t.shape)}"


def digest_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: the identity of a set of
    weights."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{dtype_name(t.dtype)}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Save ``tensors`` to ``path`` atomically; returns the file's sha256."""
    from safetensors.torch import save

    # own contiguous CPU copies: safetensors refuses tensors that share storage (tied weights)
    owned = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = save(owned, metadata=metadata)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_tensors(
    path: Path, *, sha256: str, expected: dict[str, str], what: str
) -> dict[str, torch.Tensor]:
    """Load ``path`` after checking its sha256 and that it holds exactly ``expected`` ({name:
    spec_of})."""
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AdapterError(f"cannot read {what} {str(path)!r}: {e.strerror}") from None
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise AdapterError(
            f"{what} {str(path)!r} is truncated or corrupted: its sha256 is {found[:16]}..., "
            f"the record beside it says {str(sha256)[:16]}...; save it again"
        )
    try:
        tensors = load(data)
    except Exception as e:  # the recorded hash matched, so the writer itself produced a bad file
        raise AdapterError(
            f"{what} {str(path)!r} is not a readable safetensors file: {e}"
        ) from None
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise AdapterError(
            f"{what} {str(path)!r} lacks tensor {missing[0]!r} ({len(missing)} missing)"
        )
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise AdapterError(
            f"{what} {str(path)!r} holds unexpected tensor {extra[0]!r} ({len(extra)} unexpected)"
        )
    for name, want in expected.items():
        got = spec_of(tensors[name])
        if got != want:
            raise AdapterError(f"{what} {str(path)!r}: tensor {name!r} is {got}, expected {want}")
    return tensors


__all__ = ["digest_tensors", "dtype_name", "read_tensors", "spec_of", "write_tensors"]


def read_json_record(
    directory: Path,
    name: str,
    *,
    fmt: str,
    version: int,
    error: type[Exception],
    what: str,
    writer: str,
    kind: str,
) -> tuple[dict[str, Any], Path]:
    """``directory/name`` as a JSON object of format ``fmt`` and ``version``, or ``error``
    saying which of these is wrong: no directory, no file (``writer`` did not write it),
    unreadable, another format, another version. Returns the record and its path."""
    path = directory / name
    if not directory.is_dir():
        raise error(f"no {what} directory at {str(directory)!r}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(
            f"{str(directory)!r} holds no {name}: it is not a directory {writer} wrote"
        ) from None
    except (OSError, ValueError) as e:
        raise error(f"cannot read {str(path)!r}: {e}") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise error(f"{str(path)!r} is not a {kind} (format {fmt!r})")
    if record.get("version") != version:
        raise error(
            f"{str(path)!r} has format version {record.get('version')!r}; this version reads "
            f"{version}"
        )
    return record, path
