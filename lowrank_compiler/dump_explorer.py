"""Model Explorer views of the pass dumps: the graph, each node coloured by the pass that made it.

Google's Model Explorer (``pip install 'lowrank-compiler[view]'``) lays *node data* over a
graph: ``{"<graph id>": {"name": ..., "results": {"<node id>": {"value": "02 insert-lora:
added", "bgColor": "#4e79a7"}}}}``. ``overlay`` builds it from a dump directory's pages
(their ``NN-<pass>.json``), keyed as Model Explorer's adapters key the graph shown: a PyTorch model
as a ``torch.export.ExportedProgram`` (``program``) is graph ``"graph"`` with the exported
graph's node names; an ONNX file is its graph's name (``"<main>"`` without one) with the ONNX
node names (``"<node_i>"`` for an unnamed i-th node; the ``model-explorer-onnx`` adapter).

A fresh export renames our FX graph's nodes (its ``add_1`` is another node), so FX passes mark
layers (module paths; a dumped node names its layer and the nodes it reads): a layer a pass
added nodes in, rewrote a module call of, or reported on (``"<layer>: ..."``) is that pass's,
with every shown node in that module (by ``nn_module_stack``, parameters by their module, ONNX
nodes by the tensors they read or torch.onnx's name scopes). A node it rewrote because it reads
such a layer marks the shown readers of that layer. ONNX passes mark their nodes by name. The
latest pass wins: it made what is shown.

``write_overlays`` writes ``explorer-passes.json`` (value: the pass and what it did; a colour
per pass, lighter where it rewrote) and ``explorer-report.json`` (value: the pass's report
lines about the node's layer); ``view`` serves a model or an ONNX file with both.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from .api import compile_info
from .dump_html import page_data_files
from .dump_ops import onnx_layer
from .runtime.errors import LowRankError
from .runtime.files import make_dir, write_atomic
from .runtime.onnx.passes import node_key

TORCH_GRAPH = "graph"  # the graph id of Model Explorer's PyTorch adapter
ONNX_MAIN = "<main>"  # the ONNX adapter's id for a main graph without a name
FILES = {"pass": "explorer-passes.json", "report": "explorer-report.json"}
_NAMES = {"pass": "passes", "report": "pass report"}  # as Model Explorer lists them
INSTALL = "pip install 'lowrank-compiler[view]'"
_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")


class ViewerMissingError(LowRankError, ImportError):
    """Model Explorer (or its ONNX adapter) is not installed; the message says what to install."""


@dataclass(frozen=True)
class Mark:
    """What a pass (dump number, name) did to a node, and its report lines on the node's layer."""

    index: int
    name: str
    status: str
    report: tuple[str, ...] = ()

    def label(self, what: str) -> str:
        if what == "report" and self.report:
            return f"{self.index:02d} {self.name}: " + "; ".join(self.report)
        return f"{self.index:02d} {self.name}: {self.status}"


@dataclass(frozen=True)
class _Node:
    status: str  # added, rewritten or same
    op: str
    layer: str
    reads: tuple[str, ...]  # keys of the nodes whose outputs it takes


@dataclass(frozen=True)
class _Page:
    """One pass's ``NN-<pass>.json`` (``dump_html``): its number, pass, graph, report, nodes."""

    index: int
    name: str
    onnx: bool  # nodes are ONNX nodes (keyed by ``node_key``), else FX nodes
    modified: bool
    report: tuple[str, ...]
    nodes: dict[str, _Node]

    @classmethod
    def read(cls, path: Path, index: int) -> _Page:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            nodes = {
                n["key"]: _Node(n["status"], n["op"], n["layer"], tuple(n["reads"]))
                for n in data["nodes"]
            }
            entry = data["pass"]
            return cls(
                index,
                entry["name"],
                data["graph"] == "onnx",
                bool(entry.get("modified")),
                tuple(data["report"]),
                nodes,
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{str(path)!r} is not a pass dump's JSON ({type(e).__name__}: {e}): dump the "
                "pipeline again with this version (compile/fold/export_onnx dump_dir=)"
            ) from e


def _pages(dump_dir: Path) -> list[_Page]:
    """Every ``NN-<pass>.json`` in ``dump_dir`` (the newest for each number), in order."""
    newest = page_data_files(dump_dir)
    if not newest:
        raise ValueError(
            f"no pass dumps (NN-<pass>.json) in {str(dump_dir)!r}: give the dump_dir that "
            "compile(..., dump_dir=), fold or export_onnx wrote, or `lowrank-compiler dump`'s --out"
        )
    return [_Page.read(path, number) for number, path in newest.items()]


@dataclass
class PassMarks:
    """The dumps' changes: by layer (FX passes), by reader of a layer, by ONNX node key."""

    layers: dict[str, Mark] = field(default_factory=dict)
    readers: dict[str, Mark] = field(default_factory=dict)
    onnx: dict[str, Mark] = field(default_factory=dict)


def _fx_marks(page: _Page) -> tuple[dict[str, Mark], dict[str, Mark]]:
    """The layers one FX pass changed, and the layers whose readers it rewired."""
    nodes = page.nodes
    status: dict[str, str] = {}
    for n in nodes.values():
        if n.layer and (n.status == "added" or (n.status == "rewritten" and n.op == "call_module")):
            status[n.layer] = "added" if n.status == "added" else status.get(n.layer, "rewritten")
    if page.modified:  # a module swapped under an unchanged node: the report names its layer
        known = {n.layer for n in nodes.values()} - {""}
        for head in (line.split(":", 1)[0] for line in page.report if ":" in line):
            if head in known:
                status.setdefault(head, "rewritten")
    read = set()
    for n in nodes.values():
        if n.status == "rewritten" and n.layer not in status:
            read |= {nodes[p].layer for p in n.reads if p in nodes and nodes[p].layer in status}

    def mark(layer: str, what: str) -> Mark:
        lines = tuple(line for line in page.report if line.startswith(f"{layer}:"))
        return Mark(page.index, page.name, what, lines)

    readers = {
        layer: Mark(page.index, page.name, "rewritten", (f"reads {layer}, which it changed",))
        for layer in sorted(read)
    }
    return {layer: mark(layer, s) for layer, s in status.items()}, readers


def pass_marks(dump_dir: str | os.PathLike) -> PassMarks:
    """What every pass dumped in ``dump_dir`` changed; later passes override earlier ones."""
    marks = PassMarks()
    for page in _pages(Path(dump_dir)):
        if page.onnx:
            for key, n in page.nodes.items():
                if n.status in ("added", "rewritten"):
                    lines = tuple(line for line in page.report if key in line)
                    marks.onnx[key] = Mark(page.index, page.name, n.status, lines)
        else:
            layers, readers = _fx_marks(page)
            marks.layers.update(layers)
            marks.readers.update(readers)
    return marks


@dataclass(frozen=True)
class ShownNode:
    id: str  # Model Explorer's node id
    path: str  # the module it belongs to ("" at the top or unknown)
    inputs: tuple[str, ...]  # ids of the nodes it reads
    key: str = ""  # ONNX: the key the ONNX dumps list it under


def program(model: nn.Module, example_inputs=None, example_kwargs=None):
    """``model`` through ``torch.export`` (non-strict): the ``ExportedProgram`` Model Explorer's
    PyTorch adapter reads. The call is the one ``compile`` traced unless one is given."""
    if isinstance(model, torch.export.ExportedProgram):
        return model
    args, kwargs = example_inputs, example_kwargs
    if example_inputs is None and not example_kwargs:
        info = compile_info(model)
        if info is None or info.example is None:
            raise ValueError(
                f"Model Explorer reads a {type(model).__name__} through torch.export, which needs "
                "one call's inputs: pass example_inputs=(...) (or compile the model with "
                "example_inputs=; on the command line, a factory returning (module, inputs))"
            )
        args, kwargs = info.example
    if not isinstance(args, (tuple, list)):
        args = () if args is None else (args,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.export.export(model, tuple(args), dict(kwargs or {}), strict=False)


def _program_graph(ep) -> tuple[str, list[ShownNode]]:
    specs = ep.graph_signature.input_specs
    owners = {s.arg.name: s.target for s in specs if s.target and hasattr(s.arg, "name")}
    nodes = []
    for n in ep.graph_module.graph.nodes:
        if n.op == "placeholder":  # a parameter or buffer: the module holding it
            path = owners.get(n.name, "").rpartition(".")[0]
        else:
            stack = n.meta.get("nn_module_stack") or {}
            path = str(list(stack.values())[-1][0]) if stack else ""
        nodes.append(ShownNode(n.name, path, tuple(i.name for i in n.all_input_nodes)))
    return TORCH_GRAPH, nodes


def _onnx_graph(model: onnx.ModelProto) -> tuple[str, list[ShownNode]]:
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    ids = [n.name or f"<node_{i}>" for i, n in enumerate(graph.node)]
    producer = {o: ids[i] for i, n in enumerate(graph.node) for o in n.output if o}
    nodes = []
    for i, n in enumerate(graph.node):
        reads = tuple(producer[x] for x in n.input if x in producer)
        nodes.append(ShownNode(ids[i], onnx_layer(n, inits), reads, node_key(n)))
    return graph.name or ONNX_MAIN, nodes


def shown_graph(shown) -> tuple[str, list[ShownNode]]:
    """The graph id and nodes Model Explorer shows for ``shown``: an ``ExportedProgram``, an
    ``nn.Module`` (through ``program``), an ``onnx.ModelProto`` or an ``.onnx`` path."""
    if isinstance(shown, (nn.Module, torch.export.ExportedProgram)):
        return _program_graph(program(shown))
    if isinstance(shown, onnx.ModelProto):
        return _onnx_graph(shown)
    if isinstance(shown, (str, os.PathLike)):
        return _onnx_graph(onnx.load(str(onnx_path(shown)), load_external_data=False))
    raise TypeError(
        "shown must be an nn.Module, a torch.export.ExportedProgram, an onnx.ModelProto or an "
        f".onnx path, got {type(shown).__name__}"
    )


def onnx_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix != ".onnx" or not path.is_file():
        raise ValueError(
            f"{str(path)!r} is not an .onnx file: give the file export_onnx or "
            "`lowrank-compiler export` wrote (a PyTorch model is viewed as the model itself)"
        )
    return path


def _inside(path: str, layers: dict[str, Mark]) -> str | None:
    """The deepest changed layer the module ``path`` lies in."""
    while path:
        if path in layers:
            return path
        path = path.rpartition(".")[0]
    return None


def node_marks(marks: PassMarks, nodes: list[ShownNode]) -> dict[str, Mark]:
    """Each shown node's mark (module docstring), in graph order."""
    out, layer_of = {}, {}  # node id -> its mark, -> the changed layer it lies in
    for n in nodes:
        layer = _inside(n.path, marks.layers)
        if layer is not None:
            out[n.id], layer_of[n.id] = marks.layers[layer], layer
    for n in nodes:
        read = [marks.readers[layer_of[i]] for i in n.inputs if layer_of.get(i) in marks.readers]
        if n.id not in out and read:
            out[n.id] = max(read, key=lambda m: m.index)
        direct = marks.onnx.get(n.key) if n.key else None
        if direct is not None and (n.id not in out or direct.index >= out[n.id].index):
            out[n.id] = direct
    return {n.id: out[n.id] for n in nodes if n.id in out}


def _shade(colour: str, status: str) -> str:
    """A pass's colour for the nodes it added, halfway to white for those it rewrote."""
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return colour if status == "added" else "#" + "".join(f"{(c + 255) // 2:02x}" for c in rgb)


def _node_data(graph_id: str, marked: dict[str, Mark], what: str) -> dict[str, Any]:
    passes = sorted({m.index for m in marked.values()})
    hue = {i: _PALETTE[k % len(_PALETTE)] for k, i in enumerate(passes)}
    results = {
        n: {"value": m.label(what), "bgColor": _shade(hue[m.index], m.status)}
        for n, m in marked.items()
    }
    data: dict[str, Any] = {"name": _NAMES[what], "results": results}
    if what == "pass":  # categories: each group node lists how many of its nodes each pass made
        data["showExpandedSummaryOnGroupNode"] = True
        data["showLabelCountColumnsInChildrenStatsTable"] = True
    return {graph_id: data}


def overlay(dump_dir: str | os.PathLike, shown, *, label: str = "pass") -> dict[str, Any]:
    """Model Explorer node data for ``shown`` (see ``shown_graph``) from the dumps in
    ``dump_dir``; ``label``: ``"pass"`` (value: the pass and what it did) or ``"report"`` (the
    pass's report lines about the node's layer)."""
    if label not in FILES:
        raise ValueError(f"label must be one of {sorted(FILES)}, got {label!r}")
    graph_id, nodes = shown_graph(shown)
    return _node_data(graph_id, node_marks(pass_marks(dump_dir), nodes), label)


def write_overlays(dump_dir: str | os.PathLike, shown, out_dir=None) -> list[Path]:
    """Write ``explorer-passes.json`` and ``explorer-report.json`` into ``out_dir`` (default:
    ``dump_dir``); Model Explorer loads them as node data over the graph of ``shown``."""
    out = Path(dump_dir if out_dir is None else out_dir)
    make_dir(out, "out_dir")
    graph_id, nodes = shown_graph(shown)
    marked = node_marks(pass_marks(dump_dir), nodes)
    return [
        write_atomic(out / name, json.dumps(_node_data(graph_id, marked, what), indent=1) + "\n")
        for what, name in FILES.items()
    ]


def require_viewer(module: str = "model_explorer"):
    """Import Model Explorer (or its ONNX adapter), or say what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ViewerMissingError(
            f"viewing the graph needs the {module!r} package, which is not installed: {INSTALL}"
        ) from e


def view(
    target,
    dump_dir: str | os.PathLike | None = None,
    *,
    example_inputs=None,
    example_kwargs=None,
    out_dir: str | os.PathLike | None = None,
    host: str = "localhost",
    port: int = 8080,
    open_browser: bool = True,
) -> None:
    """Serve ``target`` (a compiled ``nn.Module``, exported with the inputs ``compile`` traced
    or those given; a ``torch.export.ExportedProgram``; an ``.onnx`` file) in Model Explorer with
    the overlays of ``dump_dir`` (written there, or to ``out_dir``, first), printing the address,
    until interrupted. ``port`` 8080 moves to the next free one up to 8099; ``open_browser=False``
    on a machine without one."""
    explorer = require_viewer()
    config, extensions = explorer.config(), []
    if isinstance(target, (str, os.PathLike)):
        shown = onnx_path(target)
        require_viewer("model_explorer_onnx")
        extensions.append("model_explorer_onnx")
        config.add_model_from_path(str(shown.resolve()))
    else:
        shown = program(target, example_inputs, example_kwargs)
        config.add_model_from_pytorch(type(target).__name__, shown)
    if dump_dir is not None:
        for path in write_overlays(dump_dir, shown, out_dir):
            config.add_node_data_from_path(str(Path(path).resolve()))
    explorer.visualize_from_config(
        config, host=host, port=port, extensions=extensions, no_open_in_browser=not open_browser
    )
