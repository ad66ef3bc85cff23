"""Progress bars for long work: tqdm on a terminal, silent elsewhere, and off after ``set_quiet()``.

``progress`` wraps a loop over layers or batches (quantizing, folding, calibrating);
``training_bar`` a training loop's steps; ``Steps`` is one bar over a command's named steps (load
the model, compile, save), naming the step now running.
"""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")
_quiet = False


def set_quiet(quiet: bool = True) -> None:
    """Turn every bar of this process off (the command line's ``--quiet``)."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def _disable() -> bool | None:
    return True if _quiet else None  # None: tqdm shows the bar only on a terminal


def progress(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "layer"
) -> Iterable[T]:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; stay usable without it
        return items
    return tqdm(items, desc=desc, total=total, disable=_disable(), leave=False, unit=unit)


def training_bar(steps: int, label: str):
    """A bar over ``range(steps)`` for a training loop (``train <label>``, on stderr, at most once
    a second; ``bar.set_postfix(loss=...)`` shows the loss)."""
    from tqdm.auto import tqdm

    return tqdm(
        range(steps),
        desc=f"train {label}",
        unit="step",
        file=sys.stderr,
        mininterval=1.0,
        disable=_disable(),
    )


class Steps:
    """``with Steps("compile") as s: s.start("load model"); ...; s.start("save")``: a bar that names
    the step now running and counts those done, with the time spent."""

    def __init__(self, desc: str, total: int | None = None):
        self.desc, self.done, self.bar = desc, -1, None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(
            total=total,
            desc=desc,
            disable=_disable(),
            leave=False,
            file=sys.stderr,
            unit="step",
            bar_format="{desc} [{n_fmt} done, {elapsed}]",
        )

    def start(self, name: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.set_description_str(f"{self.desc}: {name}")

    def __enter__(self) -> "Steps":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
