"""HTML dumps: the index links every pass in order, pages highlight what each pass added,
text is escaped, and the pages render in a real browser (headless Chromium) as more than a blank."""

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import torch.fx
from models import tiny_gpt
from torch import nn

import lowrank_compiler as lrc

LAYERS = 12  # linear layers of tiny_gpt the policy targets (all but the output head)


class _Page(HTMLParser):
    """The links, graph rows (name -> class) and script elements of one page."""

    def __init__(self, text: str):
        super().__init__()
        self.links, self.rows, self.scripts, self._row, self._cells = [], {}, [], None, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "tr" and (a.get("id") or "").startswith("n-"):
            self._row, self._cells = a["id"][2:], []
            self.rows[self._row] = {"class": a.get("class"), "cells": self._cells}
        elif tag == "td" and self._row is not None:
            self._cells.append("")
        elif tag == "script":
            self.scripts.append(a.get("type"))

    def handle_data(self, data):
        if self._row is not None and self._cells:
            self._cells[-1] += data

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None


def _read(path: Path) -> _Page:
    return _Page(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    d = tmp_path_factory.mktemp("dumps")
    model = lrc.compile(tiny_gpt(), lrc.Policy(method="lora", rank=4, alpha=8), dump_dir=d)
    lrc.fold(model, dump_dir=d)  # a second pass manager continues the numbering and the index
    return d


def test_index_links_every_pass_in_order_with_its_stats(dumps):
    expected = ["00-trace", "01-find-linears", "02-insert-lora", "03-fold"]
    index = _read(dumps / "index.html")
    pages = [h[:-5] for h in index.links if re.fullmatch(r"\d\d-[a-z-]+\.html", h)]
    drawn = ["02-insert-lora", "03-fold"]  # the passes that rewrote a layer, drawings first
    assert pages == drawn + expected
    assert [h[:-4] for h in index.links if h.endswith(".txt")] == expected
    for name in expected:
        assert (dumps / f"{name}.html").is_file() and (dumps / f"{name}.txt").is_file()
    text = (dumps / "index.html").read_text()
    assert re.search(r"<td>rewritten</td><td>12</td>", text) and re.search(
        r"<td>folded</td><td>12</td>", text
    )
    # each page links its neighbours
    assert "01-find-linears.html" in _read(dumps / "02-insert-lora.html").links
    assert "03-fold.html" in _read(dumps / "02-insert-lora.html").links


def test_highlighted_nodes_are_the_nodes_each_pass_added(dumps):
    before, after = (
        _read(dumps / "01-find-linears.html").rows,
        _read(dumps / "02-insert-lora.html").rows,
    )
    added = {n for n, r in after.items() if r["class"] == "added"}
    assert added == set(after) - set(before)
    lora_a = [
        n for n in added if after[n]["cells"][3].endswith(".lora_A")
    ]  # cells: #, node, op, target, ...
    assert len(lora_a) == LAYERS  # one A per rewritten layer
    text_added = re.findall(r"^//   \+ (\S+) =", (dumps / "02-insert-lora.txt").read_text(), re.M)
    assert set(text_added) == added  # the text dump says the same
    rewritten = {n for n, r in after.items() if r["class"] == "rewritten"}
    assert rewritten and rewritten <= set(before)
    assert not {r["class"] for r in before.values()} - {"same"}  # find-linears changes no node
    folded = _read(dumps / "03-fold.html").rows
    assert {n for n, r in folded.items() if r["class"] == "added"} == set(folded) - set(after)


def test_each_page_json_says_what_its_text_dump_and_graph_say(dumps):
    """``NN-<pass>.json`` (what programs read) against ``NN-<pass>.txt`` and the graph itself."""
    for name in ["00-trace", "01-find-linears", "02-insert-lora", "03-fold"]:
        data = json.loads((dumps / f"{name}.json").read_text())
        text = (dumps / f"{name}.txt").read_text()
        status = {n["key"]: n["status"] for n in data["nodes"]}
        for mark, what in (("+", "added"), ("~", "rewritten")):
            listed = set(re.findall(rf"^//   \{mark} (\S+) =", text, re.M))
            assert {k for k, s in status.items() if s == what} == listed, (name, what)
        assert data["pass"]["name"] == name[3:] and data["graph"] == "fx"
        assert (
            len(data["nodes"]) == data["pass"]["nodes"] == len(_read(dumps / f"{name}.html").rows)
        )
    # reads are the graph's edges: rebuild the folded graph's and compare
    model = lrc.compile(tiny_gpt(), lrc.Policy(method="lora", rank=4, alpha=8))
    gm = lrc.compile_info(lrc.fold(model)).graph
    edges = {n.name: [i.name for i in n.all_input_nodes] for n in gm.graph.nodes}
    data = json.loads((dumps / "03-fold.json").read_text())
    assert {n["key"]: n["reads"] for n in data["nodes"]} == edges


@torch.fx.wrap
def _tag(x, label):
    return x


class _Labelled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return _tag(self.fc(x), "<script>alert('x')</script> & <b>")


def test_text_from_the_graph_is_escaped(tmp_path):
    lrc.compile(_Labelled(), lrc.Policy(rank=2, alpha=2), dump_dir=tmp_path)
    text = (tmp_path / "02-insert-lora.html").read_text()
    assert (
        "<script>alert" not in text and "&lt;script&gt;alert" in text and "&amp; &lt;b&gt;" in text
    )
    assert _read(tmp_path / "02-insert-lora.html").scripts == []  # no script: data is in the JSON
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # self-contained: nothing fetched


# --- rendering in a browser -------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _screenshot(page: Path, out: Path) -> None:
    browser = _chromium()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            "--window-size=1200,900",
            page.as_uri(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.is_file(), (
        f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    )


def _ink(png: Path) -> tuple[int, float]:
    """Distinct colours, and the fraction of pixels not of the most common (background) colour."""
    from PIL import Image

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=rgb.width * rgb.height)
        total = rgb.width * rgb.height
    return len(colours), 1 - max(c for c, _ in colours) / total


@pytest.mark.skipif(
    _chromium() is None, reason="no chromium binary (Debian: apt-get install chromium)"
)
def test_pages_render_in_headless_chromium_and_are_not_blank(dumps, tmp_path):
    pytest.importorskip("PIL", reason="pillow decodes the screenshots (the dev extra)")
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    _screenshot(blank, tmp_path / "blank.png")
    colours, ink = _ink(tmp_path / "blank.png")
    assert colours <= 2 and ink < 0.01  # the measure does tell a blank page
    for name in ("index", "02-insert-lora"):
        _screenshot(dumps / f"{name}.html", tmp_path / f"{name}.png")
        colours, ink = _ink(tmp_path / f"{name}.png")
        assert colours >= 50 and ink >= 0.05, (name, colours, ink)  # a blank page: < 0.01


def _svg_counts(page: Path, tmp: Path) -> list[tuple[int, int, int]]:
    """Per layer drawing on ``page`` as headless Chromium lays it out: (nodes, nodes drawn with
    a non-empty box, ports)."""
    probe = tmp / f"probe-{page.name}"
    script = (
        "<script>document.body.dataset.counts = JSON.stringify([...document.querySelectorAll("
        "'figure.layer svg')].map(s => [s.querySelectorAll('g.node').length, "
        "[...s.querySelectorAll('g.node')].filter(g => g.getBBox().width > 10).length, "
        "s.querySelectorAll('g.port').length]));</script></body>"
    )
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", script))
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"]
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [*cmd, f"--user-data-dir={profile}", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    found = re.search(r'data-counts="([^"]*)"', done.stdout)
    assert found, done.stderr[-2000:]
    import html
    import json

    return [tuple(x) for x in json.loads(html.unescape(found.group(1)))]


@pytest.mark.skipif(
    _chromium() is None, reason="no chromium binary (Debian: apt-get install chromium)"
)
def test_a_rewritten_layer_is_drawn_with_a_box_per_node_in_chromium(dumps, tmp_path):
    """insert-lora's page draws q_proj before (one Linear) and after (the nodes the pass
    inlined for it), every node a box Chromium lays out; the subgraph is counted on a fresh
    compile's graph, not read back from the drawing."""
    from lowrank_compiler.passes.helpers import graph as G

    model = lrc.compile(tiny_gpt(), lrc.Policy(method="lora", rank=4, alpha=8))
    graph = lrc.compile_info(model).graph
    layer = "blocks.0.attn.q_proj"
    inlined = [n for n in graph.graph.nodes if n.meta.get(G.ADAPTER) == layer]
    assert len(inlined) == 8  # base, dropout, A, A x, B, B x, scale, add
    counts = _svg_counts(dumps / "02-insert-lora.html", tmp_path)
    assert counts[:2] == [(1, 1, 2), (len(inlined), len(inlined), 2)]  # in and out ports
    fold = _svg_counts(dumps / "03-fold.html", tmp_path)
    assert fold[:2] == [(len(inlined), len(inlined), 2), (1, 1, 2)]
