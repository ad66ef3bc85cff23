"""The drawings on the dump pages: each page's rewritten layers (``dump_select`` picks them,
``dump_draw`` draws them) as figures, before and after; the index shows each pass's first.

A page's first drawing is also written beside it as ``NN-<pass>.before.svg`` and
``.after.svg``, which the index shows as images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .dump_draw import draw_nodes
from .dump_select import rewritten_layers, rewritten_regions
from .dump_views import esc, wrap_name

MAX_KINDS = 8  # drawings per page: one per rewritten layer kind, at most this many


def page_drawings(
    write: Callable[[Path, str], None],
    folder: Path,
    index: int,
    name: str,
    changes: dict | None,
    ops: tuple | None,
    by: str,
) -> tuple[str, dict | None]:
    """The page's drawings (``dump_select``: ``by`` "layers" or "regions"), and the first
    one's SVG files for the index: ``{"layer", "before", "after"}`` (file names), or None."""
    if ops is None or not changes:
        return "", None
    before, after = ops
    if after is None:
        return "<p>(The graph could not be read for drawing: see the table.)</p>", None
    try:
        return _drawings(write, folder, index, name, changes, before, after, by)
    except Exception as e:  # a drawing is left out, never the page
        return f"<p>(Drawing the rewrites failed: {esc(type(e).__name__)}: {esc(e)})</p>", None


def _drawings(
    write: Callable[[Path, str], None],
    folder: Path,
    index: int,
    name: str,
    changes: dict,
    before: list | None,
    after: list,
    by: str,
) -> tuple[str, dict | None]:
    """``page_drawings`` once the graph is read: a figure per kind, at most ``MAX_KINDS``."""
    pick = rewritten_layers if by == "layers" else rewritten_regions
    found = pick(before or [], after, changes)
    figures, first = [], None
    for d in found[:MAX_KINDS]:
        was = draw_nodes(before, d.before, "before") if before and d.before else ""
        now = draw_nodes(after, d.after, "after") if d.after else ""
        if first is None and now:
            first = {"layer": d.name}
            for part, svg in (("before", was), ("after", now)):
                if svg:
                    first[part] = f"{index:02d}-{name}.{part}.svg"
                    write(folder / first[part], svg + "\n")
        if was or now:
            figures.append(_figure(d.name, d.like, was, now, removed=not d.after))
    if not figures:
        return "", None
    more = len(found) - MAX_KINDS
    tail = f"<p>{more} more kinds changed: see the table.</p>" if more > 0 else ""
    head = "Rewritten layers" if before else "Quantized layers as exported"
    return f"<h2>{head}</h2>\n" + "\n".join(figures) + tail, first


_LEGEND = (
    '<div class="legend">'
    + "".join(
        f'<span><i style="background:{fill};border:1px {style} {stroke}"></i>{what}</span>'
        for fill, stroke, style, what in (
            ("#e8f0fe", "#2747a8", "solid", "operator"),
            ("#efe3fb", "#7b4fb8", "solid", "adapter tensor (trains)"),
            ("#e4e9f1", "#5b6b8c", "solid", "frozen base tensor"),
            ("#f4f4f4", "#888", "dashed", "the rest of the graph"),
        )
    )
    + "</div>"
)


def _figure(layer: str, kind: list[str], was: str, now: str, removed: bool) -> str:
    others = len(kind) - 1
    like = f" and {others} more layers of its kind" if others else ""
    names = f"<details><summary>all {len(kind)}</summary>{esc(', '.join(kind))}</details>"
    arrow = '<span class="arrow">&rarr;</span>' if was and now else ""
    return (
        f'<figure class="layer" id="layer-{esc(layer)}"><figcaption><b>{wrap_name(layer)}</b>{like}'
        f'{names if others else ""}{_LEGEND}</figcaption><div class="ba">{was}{arrow}'
        f"{'<p>removed</p>' if removed else now}</div></figure>"
    )


def index_figures(entries: list[dict]) -> str:
    """Each pass's first rewritten layer, before and after (the SVG files beside the pages)."""
    figures = []
    for e in entries:
        f = e.get("figure")
        if not f:
            continue
        was = f'<img src="{esc(f["before"])}" alt="before">' if f.get("before") else ""
        now = f'<img src="{esc(f["after"])}" alt="after">' if f.get("after") else ""
        arrow = '<span class="arrow">&rarr;</span>' if was and now else ""
        figures.append(
            f'<figure class="layer"><figcaption><a href="{esc(e["file"])}">{e["index"]:02d} '
            f"{esc(e['name'])}</a>: <b>{wrap_name(f['layer'])}</b></figcaption>"
            f'<div class="ba">{was}{arrow}{now}</div></figure>'
        )
    if not figures:
        return ""
    return "<h2>What each pass did to its first rewritten layer</h2>\n" + "\n".join(figures)


__all__ = ["MAX_KINDS", "index_figures", "page_drawings"]
