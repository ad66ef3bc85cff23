"""Text the project owns for training and evaluation (see SOURCES.md beside this file).

``sentences.txt``: original English sentences, one per line, written for this project
and released with it under Apache-2.0. The split is fixed: every 5th line (1-based
lines 5, 10, ...) is held out for evaluation, the rest train; the two never overlap.
"""

from __future__ import annotations

from importlib import resources


def sentences() -> list[str]:
    text = resources.files(__name__).joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def split() -> tuple[list[str], list[str]]:
    """(train, eval): disjoint, the same on every machine."""
    lines = sentences()
    train = [s for i, s in enumerate(lines, start=1) if i % 5]
    held = [s for i, s in enumerate(lines, start=1) if i % 5 == 0]
    seen = set(train)
    return train, [s for s in held if s not in seen]
