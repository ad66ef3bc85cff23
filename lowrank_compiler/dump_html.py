"""HTML views of the pass dumps: one page per pass and an index, for a browser.

Beside each text dump ``NN-<pass>.txt`` the pass manager writes ``NN-<pass>.html``: the
pass's stats and report, a strip with one mark per graph node, and the graph as a table
(node, op, target, inputs, shape, layer: ``dump_views`` reads them from an FX graph, or from
an ONNX graph for the ONNX stage's passes). Nodes the pass added are highlighted green,
nodes it rewrote (same name, new op, target or inputs) amber; the nodes it removed are
listed below the table. ``index.html`` links the passes in order with their node counts
and stats.

Every pass's page is self-contained (inline CSS and SVG, nothing fetched, no script; the index
shows the drawings' SVG files beside it) and every piece of text from the graph is escaped. A
later pipeline that continues the numbering (``fold(..., dump_dir=)``) rebuilds the index with
the earlier passes from their JSON (below) and links the previous page to its own.

Beside each page, ``NN-<pass>.json`` holds what the page shows for programs to read (the Model
Explorer overlays do): ``{"pass": <index entry>, "graph": "fx" | "onnx", "report": [...],
"nodes": [{"key", "status", "op", "layer", "reads"}, ...]}``, ``status`` one of ``added``,
``rewritten``, ``same``, ``reads`` the keys of the nodes whose outputs it takes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from .dump_figures import index_figures, page_drawings
from .dump_ops import Op
from .dump_views import Row, esc, fx_rows, onnx_rows, wrap_name

INDEX = "index.html"
_NEXT = "<!--next-->"  # where a page's link to the following one goes once that page exists
_DATA = re.compile(r"^(\d{2,})-.+\.json$")  # NN-<pass>.json

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,sans-serif;margin:0;background:#f6f7fb;color:#1d2433}
header{background:#1f2a44;color:#fff;padding:14px 24px}
header h1{font-size:20px;margin:0 0 4px}
header .sub{color:#b9c3dc;font-family:ui-monospace,monospace;font-size:12px}
nav{padding:8px 24px;background:#e7ebf5;font-size:13px}nav a{margin-right:18px;color:#2747a8}
main{padding:16px 24px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:14px}
.card{background:#fff;border-radius:8px;padding:10px 14px;box-shadow:0 1px 3px #0002}
.card{min-width:110px}.card b{display:block;font-size:22px}.card span{color:#5a6478;font-size:12px}
.card.added b{color:#1f8a4c}.card.rewritten b{color:#b07800}.card.removed b{color:#c0392b}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 3px #0002;width:100%}
th{background:#33415f;color:#fff;text-align:left;padding:6px 8px;font-weight:600}
th{position:sticky;top:0}
td{padding:3px 8px;border-bottom:1px solid #e6e9f0;vertical-align:top}
td{font-family:ui-monospace,monospace;font-size:12px}
td.num,td.kind{white-space:nowrap}td.in{overflow-wrap:anywhere;min-width:200px}
tr.added td{background:#dff5e7}tr.added td:first-child{border-left:4px solid #1f8a4c}
tr.rewritten td{background:#fff1cc}tr.rewritten td:first-child{border-left:4px solid #d99a00}
tr.removed td{background:#fde4e1;text-decoration:line-through}
.op{border-radius:4px;padding:0 5px;color:#fff;font-size:11px}
.op-placeholder,.op-output{background:#5b6b8c}.op-call_module{background:#7b4fb8}
.op-call_function,.op-standard{background:#16867f}.op-custom{background:#7b4fb8}
.op-call_method{background:#3d5bd1}.op-get_attr{background:#9a6b2f}
.strip{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:8px}
.strip{margin-bottom:14px}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px}
.legend i{vertical-align:-1px}
ul.report{font-family:ui-monospace,monospace;font-size:12px;background:#fff;border-radius:8px}
ul.report{padding:10px 10px 10px 28px;box-shadow:0 1px 3px #0002;max-height:320px;overflow:auto}
table.stats{width:auto;min-width:320px;box-shadow:none}
.stats td:first-child{font-weight:600;white-space:nowrap}
.index td:nth-child(2){max-width:360px;overflow-wrap:anywhere}
details summary{cursor:pointer;color:#2747a8}
#only:checked ~ table.graph tr.same{display:none}label{font-size:13px}table.graph{margin-top:8px}
h2{font-size:16px;margin:18px 0 8px}a{color:#2747a8}
figure.layer{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;margin:0 0 14px}
figure.layer{padding:10px 14px;overflow-x:auto}
figure.layer figcaption{font-size:13px;margin-bottom:6px}
.ba{display:flex;align-items:flex-start;gap:18px}.ba .arrow{font-size:28px;color:#5a6478}
.ba .arrow{align-self:center}.ba svg,.ba img{flex:none}
"""


_STRIP_COLOURS = {"added": "#1f8a4c", "rewritten": "#e0a100", "same": "#c5cbd8"}


def _page(title: str, subtitle: str, nav: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta '
        f'charset="utf-8"><title>{esc(title)}</title>\n'
        f"<style>{_CSS}</style>\n</head><body>\n"
        f'<header><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div></header>\n'
        f"<nav>{nav}</nav>\n<main>\n{body}\n</main></body></html>\n"
    )


def status_of(name: str, changes: dict | None) -> str:
    if changes and name in changes.get("added", ()):
        return "added"
    if changes and name in changes.get("rewritten", ()):
        return "rewritten"
    return "same"


def _rows(rows: list[Row], changes: dict | None) -> str:
    out = []
    for i, r in enumerate(rows):
        status = status_of(r.key, changes)
        out.append(
            f'<tr id="n-{esc(r.key)}" class="{status}"><td '
            f'class="num">{i}</td><td>{wrap_name(r.name)}</td>'
            f'<td class="kind"><span class="op op-{esc(r.op_class)}">{esc(r.op)}</span></td>'
            f'<td>{wrap_name(r.target)}</td><td class="in">{r.inputs}</td>'
            f'<td class="kind">{esc(r.shape)}</td><td>{wrap_name(r.layer)}</td></tr>'
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("#", "node", "op", "target", "inputs", "shape", "layer")
    )
    return f'<table class="graph"><tr>{head}</tr>\n' + "\n".join(out) + "</table>"


def _strip(rows: list[Row], changes: dict | None) -> str:
    """One mark per node in graph order, coloured by what the pass did to it (an overview)."""
    per_row, w, h = 80, 11, 14
    marks = []
    for i, r in enumerate(rows):
        x, y = (i % per_row) * w, (i // per_row) * h
        colour = _STRIP_COLOURS[status_of(r.key, changes)]
        marks.append(
            f'<a href="#n-{esc(r.key)}"><rect x="{x}" y="{y}" width="{w - 2}" height="{h - 3}" '
            f'rx="2" fill="{colour}"><title>{esc(r.name)}</title></rect></a>'
        )
    height = ((len(rows) - 1) // per_row + 1) * h if rows else h
    legend = "".join(
        f'<span><i style="background:{c}"></i>{s if s != "same" else "unchanged"}</span>'
        for s, c in _STRIP_COLOURS.items()
    )
    return (
        f'<div class="strip"><div class="legend">{legend}</div>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{per_row * w}" height="{height}" '
        f'role="img" aria-label="graph nodes in order">{"".join(marks)}</svg></div>'
    )


# --- stats ------------------------------------------------------------------------------


def _value(value: Any) -> str:
    if isinstance(value, float):
        return esc(f"{value:.4g}")
    if (
        isinstance(value, dict)
        and 0 < len(value) <= 3
        and not any(isinstance(v, (dict, list)) for v in value.values())
    ):
        return ", ".join(f"{esc(k)}: {_value(v)}" for k, v in value.items())
    if isinstance(value, dict) and value:
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{_value(v)}</td></tr>" for k, v in value.items())
        return f"<details><summary>{len(value)} entries</summary><table>{rows}</table></details>"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return (
            f"<details><summary>{len(value)} "
            f"items</summary>{esc(', '.join(map(str, value)))}</details>"
        )
    return esc(value)


def stats_table(stats: dict) -> str:
    if not stats:
        return "<p>no stats</p>"
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{_value(v)}</td></tr>" for k, v in stats.items())
    return f'<table class="stats">{rows}</table>'


def _cards(entry: dict) -> str:
    counts = entry.get("changes") or {}
    cards = [
        ("nodes", entry["nodes"], ""),
        ("added", counts.get("added", 0), "added"),
        ("rewritten", counts.get("rewritten", 0), "rewritten"),
        ("removed", counts.get("removed", 0), "removed"),
    ]
    if entry.get("modified") is not None:
        cards.append(("modified", "yes" if entry["modified"] else "no", ""))
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card {cls}"><b>{esc(v)}</b><span>{esc(k)}</span></div>'
            for k, v, cls in cards
        )
        + "</div>"
    )


# --- pages and index ----------------------------------------------------------------------


class HtmlDump:
    """Writes ``NN-<pass>.html`` for each dump and keeps ``index.html`` up to date."""

    def __init__(self, dump_dir: Path, first_index: int, write: Callable[[Path, str], None]):
        self.dir = Path(dump_dir)
        self.write = write  # the pass manager's atomic writer
        self.entries = _earlier_entries(self.dir, first_index) if first_index > 1 else []

    fx_view = staticmethod(fx_rows)
    onnx_view = staticmethod(onnx_rows)

    def page(
        self,
        index: int,
        name: str,
        rows: list[Row],
        *,
        title: str,
        stats: dict | None = None,
        report: list[str] = (),
        changes: dict | None = None,
        before: dict[str, str] | None = None,
        modified: bool | None = None,
        ops: tuple[list[Op] | None, list[Op]] | None = None,
        draw: dict | None = None,
        by: str = "layers",
        graph: str = "fx",
    ) -> Path:
        """One pass's page and its JSON; ``rows`` of an ``fx`` or ``onnx`` ``graph``; ``ops``:
        the graph before and after as drawable ops, of which the parts ``draw`` (default:
        ``changes``) touches are drawn, ``by`` layers or regions."""
        file = f"{index:02d}-{name}.html"
        drawings, figure = page_drawings(
            self.write, self.dir, index, name, changes if draw is None else draw, ops, by
        )
        entry = {
            "index": index,
            "name": name,
            "title": title,
            "file": file,
            "text": f"{index:02d}-{name}.txt",
            "modified": modified,
            "nodes": len(rows),
            "stats": stats or {},
            "changes": {k: len(v) for k, v in (changes or {}).items()},
            "figure": figure,
        }
        previous = self.entries[-1] if self.entries else None
        nav = f'<a href="{INDEX}">index</a>'
        if previous is not None:
            nav = f'<a href="{esc(previous["file"])}">&larr; {esc(previous["file"][:-5])}</a>' + nav
        body = _cards(entry) + _body(
            rows, stats or {}, list(report), changes, before or {}, drawings
        )
        self.write(self.dir / file, _page(f"{index:02d} {name}", title, nav + _NEXT, body))
        data = _data(entry, graph, rows, report, changes)
        self.write(self.dir / f"{index:02d}-{name}.json", data)
        if previous is not None:
            self._link_next(self.dir / previous["file"], file)
        self.entries.append(entry)
        self.write(self.dir / INDEX, render_index(self.entries))
        return self.dir / file

    def _link_next(self, path: Path, file: str) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:  # the earlier page is gone: the index still links every pass
            return
        if _NEXT in text:
            self.write(
                path, text.replace(_NEXT, f'<a href="{esc(file)}">{esc(file[:-5])} &rarr;</a>', 1)
            )


def _data(entry: dict, graph: str, rows: list[Row], report, changes: dict | None) -> str:
    nodes = [
        dict(key=r.key, status=status_of(r.key, changes), op=r.op, layer=r.layer, reads=r.reads)
        for r in rows
    ]
    data = {"pass": entry, "graph": graph, "report": list(report), "nodes": nodes}
    return json.dumps(data, default=str) + "\n"


def _body(
    rows: list[Row],
    stats: dict,
    report: list[str],
    changes: dict | None,
    before: dict[str, str],
    drawings: str = "",
) -> str:
    parts = [drawings] if drawings else []
    parts += ["<h2>Stats</h2>", stats_table(stats)]
    if report:
        parts += [
            "<h2>Report</h2>",
            '<ul class="report">' + "".join(f"<li>{esc(r)}</li>" for r in report) + "</ul>",
        ]
    parts += [
        "<h2>Graph</h2>",
        _strip(rows, changes),
        '<input type="checkbox" id="only"><label for="only"> show only added and rewritten '
        "nodes</label>",
        _rows(rows, changes),
    ]
    removed = (changes or {}).get("removed", [])
    if removed:
        rows = "".join(
            f'<tr class="removed"><td>{esc(n)}</td><td>{esc(before.get(n, ""))}</td></tr>'
            for n in removed
        )
        parts += [
            f"<h2>Removed ({len(removed)})</h2>",
            f"<table><tr><th>node</th><th>was</th></tr>{rows}</table>",
        ]
    return "\n".join(parts)


def page_data_files(dump_dir: Path) -> dict[int, Path]:
    """Each number's ``NN-<pass>.json`` in ``dump_dir`` (the newest where a number has two), in
    order of number."""
    found = sorted((p.stat().st_mtime, p) for p in dump_dir.glob("*.json") if _DATA.match(p.name))
    newest = {int(_DATA.match(p.name)[1]): p for _, p in found}  # the newest last, so it stays
    return dict(sorted(newest.items()))


def _earlier_entries(dump_dir: Path, first_index: int) -> list[dict]:
    """Index entries of the pages before ``first_index`` (from their JSON; unreadable ones left
    out of the index)."""
    entries = []
    for number, path in page_data_files(dump_dir).items():
        if number < first_index:
            try:
                entries.append(json.loads(path.read_text(encoding="utf-8"))["pass"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return entries


def _index_row(e: dict) -> str:
    c = e.get("changes") or {}
    counts = (
        f'<span style="color:#1f8a4c">+{c.get("added", 0)}</span> '
        f'<span style="color:#c0392b">&minus;{c.get("removed", 0)}</span> '
        f'<span style="color:#b07800">~{c.get("rewritten", 0)}</span>'
    )
    modified = "" if e.get("modified") is None else ("yes" if e["modified"] else "no")
    return (
        f'<tr><td class="num">{e["index"]:02d}</td><td><a '
        f'href="{esc(e["file"])}">{esc(e["name"])}</a> '
        "<small>(<a "
        f'href="{esc(e["text"])}">text</a>)</small><br><small>{esc(e["title"])}</small></td>'
        f"<td>{esc(modified)}</td><td>{e['nodes']}</td><td>{counts}</td>"
        f"<td>{stats_table(e['stats'])}</td></tr>"
    )


def render_index(entries: list[dict]) -> str:
    head = (
        "<tr><th>#</th><th>pass</th><th>modified</th><th>nodes</th><th>+added &minus;removed "
        "~rewritten</th><th>stats</th></tr>"
    )
    table = (
        f'<table class="index">{head}\n' + "\n".join(_index_row(e) for e in entries) + "</table>"
    )
    subtitle = " → ".join(e["name"] for e in entries)
    body = index_figures(entries) + table
    return _page("lowrank-compiler passes", subtitle, f'<a href="{INDEX}">index</a>', body)


__all__ = ["HtmlDump", "render_index", "stats_table", "status_of"]
