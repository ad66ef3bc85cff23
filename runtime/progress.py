"""Progress bars for long loops (quantizing, folding, calibrating): tqdm on a terminal, silent elsewhere."""

from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "layer") -> Iterable[T]:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; stay usable without it
        return items
    return tqdm(items, desc=desc, total=total, disable=None, leave=False, unit=unit)
