"""Writing files whole or not at all: the one way the package writes anything.

Every writer stages its output under a temporary name beside the destination (same
directory, so the rename is atomic), flushes it to disk (``fsync``), gives it the usual
mode (``0o666`` / ``0o777`` less the umask: ``mkstemp`` makes files private), renames it into
place and flushes the directory entry. A failure (disk full, no permission, an exception
in the caller's code) removes everything staged and raises ``OutputError`` naming the
path; a file or directory that was at the destination before survives untouched.

- ``write_atomic(path, data)``: text or bytes;
- ``staged_file(path)``: a temporary path for writers that need a file name (onnx,
  onnxruntime's quantizer), committed with ``commit``;
- ``staged_dir(out, marker)``: a whole directory, replacing only one this package wrote
  before (it holds ``marker``), never a user's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .errors import OutputError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(staged: Path, path: Path, *, mode: int = 0o666) -> None:
    """Flush ``staged`` to disk, give it the usual mode, rename it to ``path``, flush the
    directory."""
    staged, path = Path(staged), Path(path)
    try:
        if staged.is_file():
            _fsync(staged)
        os.chmod(staged, mode & ~current_umask())
        os.replace(staged, path)
        with contextlib.suppress(OSError):  # not every file system can sync a directory
            _fsync(path.parent)
    except OSError as e:
        raise OutputError.of(path, e) from e


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a path in a fresh temporary directory beside ``path``; the directory and whatever
    the caller left in it are removed on exit (``commit`` what should survive)."""
    path = Path(path)
    try:
        stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as e:
        raise OutputError.of(path, e) from e
    try:
        yield stage / path.name
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError.of(path, e) from e
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path``, whole or not at all."""
    path = Path(path)
    with staged_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        commit(tmp, path)
    return path


def check_dir(path: Path, what: str) -> None:
    """Raise ``OutputError`` if ``path`` cannot be (or become) a writable directory; creates
    nothing."""
    for p in (path, *path.parents):
        if not p.exists():
            continue
        if not p.is_dir():
            reason = "it is a file" if p == path else f"{str(p)!r} is a file"
            raise OutputError(
                f"{what} {str(path)!r} cannot be a directory: {reason}; name a directory"
            )
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputError(
                f"{what} {str(path)!r} cannot be written: no permission to write in {str(p)!r}"
            )
        return


def make_dir(path: Path, what: str) -> None:
    check_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError.of(path, e, what) from e


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, marker: str) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it becomes ``out``, on failure it vanishes
    (with any parent directories it had to create).

    ``out`` may be missing, empty, or a directory holding ``marker`` (one of ours, written
    before: replaced once the new one is complete); anything else is refused, so no user
    file is ever overwritten.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output directory {str(out)!r} exists and is a file; name a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).exists():
        raise OutputError(
            f"output directory {str(out)!r} is not empty and holds no {marker}, so this package "
            "did "
            f"not write it: name a new or empty directory"
        )
    created = _first_missing(out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise OutputError(
            f"cannot write to output directory {str(out)!r}: {e.strerror}; name a writable "
            f"directory"
        ) from None
    try:
        yield tmp
        _commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _first_missing(path: Path) -> Path | None:
    """The outermost ancestor of ``path`` (or itself) that does not exist yet."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists() or p.is_symlink():
            break
        missing = p
    return missing


def _commit_dir(tmp: Path, out: Path) -> None:
    if not out.exists():
        commit(tmp, out, mode=0o777)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(out, old)
    commit(tmp, out, mode=0o777)
    shutil.rmtree(old, ignore_errors=True)
