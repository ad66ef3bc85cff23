"""Memory while training: the frozen base's bytes, and the process's peak resident set.

The peak is the kernel's high-water mark (``VmHWM``), reset when the block starts by
writing 5 to ``/proc/self/clear_refs`` (Linux). Where that cannot be done the figure is
the process's peak so far (``getrusage``), and ``exact`` is False.
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
    """``with PeakRSS() as peak: ...``; then ``peak.bytes`` (and ``peak.exact``)."""

    def __enter__(self) -> Self:
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


def _high_water_mark() -> int | None:
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None
