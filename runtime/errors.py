"""The project's exception types.

Every error a user can trigger is one of these, and its message names the offending
layer, field or value and says what would work. Errors about bad input also derive
from ``ValueError`` (or ``TypeError``) so generic handlers still catch them.
"""

from __future__ import annotations


class LowRankError(Exception):
    """Base class of every error raised by lowrank-compiler."""


class PolicyError(LowRankError, ValueError):
    """A policy field, or an option derived from it, is invalid (the message names the field)."""


class AdapterError(LowRankError, ValueError):
    """Saved adapters or a compiled model's state do not fit the model, or their files are
    damaged."""


class OutputError(LowRankError, OSError):
    """An output file or directory cannot be written (the message names the path and why).

    Raised before anything is written, or after the partial write was removed: a failed
    write never leaves a file behind. Also an ``OSError`` (with the cause's ``errno``), so
    I/O handlers still catch it.
    """

    @classmethod
    def of(cls, path, cause: OSError, what: str = "") -> "OutputError":
        """``cannot write <what> '<path>': <reason>``, keeping the cause's errno."""
        error = cls(
            f"cannot write {what + ' ' if what else ''}{str(path)!r}: {cause.strerror or cause}"
        )
        error.errno = cause.errno
        return error


class ExportError(LowRankError, ValueError):
    """The model cannot be exported as asked (the message says which layer and what to do)."""


class ModelFileError(LowRankError, ValueError):
    """A model file is missing, truncated, corrupt, or refers to data outside its directory."""
