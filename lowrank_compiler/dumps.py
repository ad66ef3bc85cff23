"""The pass dumps: what a pass added, removed and rewrote, then the graph; and ``DumpWriter``.

``NN-<pass>.txt`` starts with a header (``// step 2 of 3, after: find-linears``, whether
the pass modified the graph, its stats, node counts, the pass's own report lines, one line
per added / removed / rewritten node) and then ``str(gm.graph)``. A node is *rewritten*
when it keeps its name but changes its op, target, arguments or keyword arguments. The ONNX
stage's passes write the same kind of dump over the ONNX graph (``runtime.onnx.passes``).

``DumpWriter`` owns a dump directory's numbering: the FX pass manager and the ONNX stage both
take their ``NN`` from it, so an export inside a pipeline numbers its ONNX passes right after
the pass that exported, and a later ``fold`` or export continues after the highest number there.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch.fx as fx

from .dump_html import HtmlDump
from .dump_ops import Op, fx_ops, onnx_ops
from .passes import PassResult
from .runtime.files import make_dir, write_atomic
from .runtime.onnx.passes import OnnxPassResult, OnnxPassSpec

LOWERED = ("MatMulNBits", "GatherBlockQuantized", "DequantizeLinear")
_NUMBERED = re.compile(r"^(\d\d)-.+\.txt$")


def next_index(dump_dir: Path) -> int:
    """The number after the highest ``NN-*.txt`` dump in ``dump_dir`` (0 when it has none)."""
    numbers = [
        int(m.group(1))
        for p in (dump_dir.iterdir() if dump_dir.is_dir() else ())
        if (m := _NUMBERED.match(p.name))
    ]
    return max(numbers) + 1 if numbers else 0


class DumpWriter:
    """Writes ``NN-<name>.txt`` and its HTML page into ``dump_dir``, numbering from ``first``
    (``None``: after the highest number there)."""

    def __init__(self, dump_dir: Path, first: int | None = None):
        self.dir = Path(dump_dir)
        make_dir(self.dir, "dump_dir")
        self.next = next_index(self.dir) if first is None else first
        self.html = HtmlDump(self.dir, max(self.next, 1), write_atomic)
        self._before: dict[str, list[Op] | None] = {"fx": None, "onnx": None}

    def snapshot(self, gm: fx.GraphModule) -> None:
        """Keep ``gm`` as drawable ops before a pass that may rewrite it in place (unless the
        last page's graph is kept already): the next FX page draws its rewrites before and
        after."""
        if self._before["fx"] is None:
            self._before["fx"] = _drawable(fx_ops, gm)

    def reserve(self) -> int:
        """The next number, taken (a pass whose dump is written after the ONNX stage it ran)."""
        self.next += 1
        return self.next - 1

    def fx(self, index: int, name: str, text: str, gm: fx.GraphModule, **page) -> None:
        write_atomic(self.dir / f"{index:02d}-{name}.txt", text)
        after = _drawable(fx_ops, gm)
        self.html.page(index, name, self.html.fx_view(gm), ops=(self._before["fx"], after), **page)
        self._before["fx"] = after

    def onnx(self, spec: OnnxPassSpec, result: OnnxPassResult, changes: dict, text: str) -> None:
        """The ONNX stage's ``dump`` (``runtime.onnx.passes.DumpFn``)."""
        index = self.reserve()
        write_atomic(self.dir / f"{index:02d}-{spec.name}.txt", text)
        after = _drawable(onnx_ops, result.model)
        before = self._before["onnx"] if changes else None  # the first page: as exported
        self._before["onnx"] = after
        # the first page draws each quantized layer as torch's export lowered it
        draw = changes or {"added": [o.name for o in after or () if o.label in LOWERED]}
        self.html.page(
            index,
            spec.name,
            self.html.onnx_view(result.model),
            title=f"ONNX: {spec}",
            stats=result.stats,
            report=result.report,
            changes=changes,
            modified=result.modified,
            ops=(before, after),
            draw=draw,
            by="regions" if changes else "layers",
            graph="onnx",
        )


def _drawable(fn, graph) -> list[Op] | None:
    """``fn(graph)``, the graph as drawable ops, or None when that fails: the page then goes
    without its drawings (and says so), never the dump without its page."""
    try:
        return fn(graph)
    except Exception:
        return None


def signature(gm: fx.GraphModule) -> dict[str, str]:
    """Each node's name -> its op, target and arguments: what ``diff_nodes`` compares."""
    return {n.name: f"{n.op} {n.target} {n.args} {n.kwargs}" for n in gm.graph.nodes}


def _node_line(node: fx.Node) -> str:
    target = getattr(node.target, "__name__", node.target)
    return f"{node.name} = {node.op}[{target}]"


def diff_nodes(before: dict[str, str], gm: fx.GraphModule) -> dict[str, list[str]]:
    after = signature(gm)
    return {
        "added": [n for n in after if n not in before],
        "removed": [n for n in before if n not in after],
        "rewritten": [n for n in after if n in before and before[n] != after[n]],
    }


def render_dump(title: str, header: list[str], gm: fx.GraphModule) -> str:
    lines = [f"// {title}"] + [f"// {h}" for h in header] + ["", str(gm.graph)]
    return "\n".join(lines) + "\n"


def dump_header(
    step: int,
    total: int,
    done: list[str],
    result: PassResult,
    changes: dict[str, list[str]],
    gm: fx.GraphModule,
) -> list[str]:
    """The dump header of one pass (module docstring)."""
    lines = [
        f"step {step} of {total}" + (f", after: {', '.join(done)}" if done else ""),
        f"modified: {'yes' if result.modified else 'no'}",
        f"stats: {result.stats}",
        f"nodes: +{len(changes['added'])} added, -{len(changes['removed'])} removed, "
        f"~{len(changes['rewritten'])} rewritten",
    ]
    nodes = {n.name: n for n in gm.graph.nodes}
    lines += [f"  {line}" for line in result.report]
    lines += [f"  + {_node_line(nodes[n])}" for n in changes["added"]]
    lines += [f"  - {n}" for n in changes["removed"]]
    lines += [f"  ~ {_node_line(nodes[n])}" for n in changes["rewritten"]]
    return lines
