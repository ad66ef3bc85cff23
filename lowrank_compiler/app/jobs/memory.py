"""Memory while training: the frozen base's bytes, and the process's peak resident set.

The peak is the kernel's high-water mark (``VmHWM``), reset when the block starts by
writing 5 to ``/proc/self/clear_refs`` (Linux). Where that cannot be done the figure is
the process's peak so far (``getrusage``), and ``exact`` is False. ``grown`` is the peak less a
resident set taken before (by default at the block's start): the libraries' pages, the same for
every row of a job, left out.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path
from typing import Self

from torch import nn


def frozen_bytes(model: nn.Module) -> int:
    """Bytes of everything that does not train: frozen parameters and buffers."""
    params = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    return params + sum(b.numel() * b.element_size() for b in model.buffers())


class PeakRSS:
    """``with PeakRSS() as peak: ...``; then ``peak.bytes``, ``peak.grown`` (above ``before``, a
    ``resident_bytes()`` taken earlier, or the resident set at the start) and ``peak.exact``."""

    def __init__(self, before: int | None = None):
        self.before = before

    def __enter__(self) -> Self:
        if self.before is None:
            self.before = resident_bytes() or 0
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.exact = True
        except OSError:
            self.exact = False
        return self

    def __exit__(self, *exc) -> None:
        self.bytes = _high_water_mark()
        if self.bytes is None:
            self.exact = False
            usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.bytes = (
                usage if sys.platform == "darwin" else usage * 1024
            )  # macOS: bytes; Linux: KiB
        self.grown = max(self.bytes - self.before, 0)


def resident_bytes() -> int | None:
    """The process's resident set now (``VmRSS``); None where /proc is not there."""
    return _status_kib("VmRSS")


def _high_water_mark() -> int | None:
    return _status_kib("VmHWM")


def _status_kib(field: str) -> int | None:
    try:
        found = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None
