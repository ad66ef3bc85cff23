"""Errors of the compiler's top layer: tracing, pipelines and the pass manager, the command line.

They derive from ``runtime.errors.LowRankError`` like every error of the project; those the
runtime can raise (formats, files, adapters) live in ``runtime/errors.py``, ``TargetError``
beside the pattern language (``passes/helpers/select.py``).
"""

from __future__ import annotations

from .runtime.errors import LowRankError


class TraceError(LowRankError, RuntimeError):
    """The model could not be turned into a graph (the message says where and what to pass)."""


class PipelineError(LowRankError, ValueError):
    """A pipeline string or pass option is malformed, or names an unknown pass."""


class LintError(LowRankError, RuntimeError):
    """The graph failed verification after a pass."""


class PassError(LowRankError, RuntimeError):
    """A pass failed; the message names it and the passes that ran before it."""

    def __init__(self, message: str, *, pass_name: str, before: tuple[str, ...]):
        super().__init__(message)
        self.pass_name = pass_name
        self.before = before


class PassInputError(PassError, ValueError):
    """A pass rejected its input (bad option or unsupported layer); also a ``ValueError``."""


class ModelSpecError(LowRankError, ValueError):
    """A model named on the command line (directory, ``file.py:factory``, ``minilm``) cannot be
    built."""


_COMBINED: dict[type, type] = {}


def pass_error_type(e: Exception) -> type:
    """The type the pass manager raises for a pass that raised ``e``: ``PassError``
    (``PassInputError`` for bad input), and also ``e``'s own project error type, so that
    ``except PolicyError`` and ``except PassError`` both catch a pass's policy error.
    The combined class (``PolicyError(PassInputError, PolicyError)``) is made once per type."""
    parent = PassInputError if isinstance(e, ValueError) else PassError
    base = type(e)
    if not isinstance(e, LowRankError) or isinstance(e, PassError):
        return parent
    if base not in _COMBINED:
        _COMBINED[base] = type(base.__name__, (parent, base), {"__module__": base.__module__})
    return _COMBINED[base]
