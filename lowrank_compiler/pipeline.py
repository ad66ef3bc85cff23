"""Pipelines of passes, and the manager that runs them, verifies the graph and dumps it.

A pipeline is a list of ``PassSpec(name, options)`` and prints as a string that parses
back to the same pipeline (MLIR's textual pass pipelines)::

    find-linears{target=all-linear},insert-lora{rank=16,alpha=32.0}

``PassManager.run`` executes the passes in order. After each one it lints the graph
(``fx.Graph.lint``, every module reference resolves, the graph and the user's model
hold the same module objects, the generated code compiles) and, with ``dump_dir``,
writes ``NN-<pass>.txt``: a header naming the pass, its options and the nodes it
added, removed and rewrote, then the graph. ``00-trace.txt`` holds the graph as traced.
Beside each, ``NN-<pass>.html`` shows the same with the changed nodes highlighted, and
``index.html`` links them in order (``dump_html``).
A pass that raises is reported as ``PassError`` naming it and the passes before it, and
the run's module swaps and ``requires_grad`` changes are undone. Dumps of the passes that
completed stay: they show the graph up to the failure. Nothing else is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.fx as fx

from .dump_html import HtmlDump
from .passes import PassResult, get_pass
from .passes.helpers import graph as G
from .runtime.errors import LowRankError
from .runtime.files import make_dir, write_atomic
from .errors import LintError, PassError, PassInputError, PipelineError
from .options import Reader, format_value


@dataclass(frozen=True)
class PassSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # options is a dict: hash what equality compares, order-free
        return hash((self.name, frozenset((k, format_value(v)) for k, v in self.options.items())))

    def __str__(self) -> str:
        if not self.options:
            return self.name
        body = ",".join(f"{k}={format_value(v)}" for k, v in self.options.items())
        return f"{self.name}{{{body}}}"

    def validate(self) -> None:
        try:
            info = get_pass(self.name)
        except KeyError as e:
            raise PipelineError(str(e.args[0])) from None
        unknown = set(self.options) - set(info.options)
        if unknown:
            raise PipelineError(
                f"pass {self.name!r} has no option(s) {sorted(unknown)}; its options are {sorted(info.options)}"
            )


@dataclass(frozen=True)
class Pipeline:
    passes: tuple[PassSpec, ...]

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        """Build a pipeline from its textual form; unknown passes or options are errors."""
        if not isinstance(text, str) or not text.strip():
            raise PipelineError("a pipeline string names at least one pass, e.g. 'find-linears,insert-lora{rank=8}'")
        r = Reader(text)
        specs = []
        while True:
            name = r.word()
            options = r.mapping() if r.peek() == "{" else {}
            specs.append(PassSpec(name, options))
            if not r.peek():
                break
            r.expect(",")
        pipeline = cls(tuple(specs))
        pipeline.validate()
        return pipeline

    def validate(self) -> None:
        for spec in self.passes:
            spec.validate()


def lint(gm: fx.GraphModule) -> None:
    """Verify the graph; raise ``LintError`` saying what is wrong."""
    try:
        gm.graph.lint()
    except Exception as e:
        raise LintError(f"graph is malformed: {e}") from e
    model = G.model_of(gm)
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "get_attr"):
            continue
        try:
            obj = gm.get_submodule(node.target) if node.op == "call_module" else _get_attr(gm, node.target)
        except AttributeError as e:
            raise LintError(f"node {node.name} refers to {node.target!r}, which does not exist: {e}") from e
        if node.op == "call_module" and model is not None and model is not gm:
            try:
                in_model = model.get_submodule(node.target)
            except AttributeError:
                continue  # the tracer's own containers (torch.export) have no model counterpart
            if in_model is not obj:
                raise LintError(
                    f"graph and model disagree at {node.target!r}: graph holds {type(obj).__name__}, "
                    f"model holds {type(in_model).__name__}"
                )
    try:
        gm.recompile()
    except Exception as e:
        raise LintError(f"graph does not compile to Python: {e}") from e


_COMBINED: dict[type, type] = {}


def _error_type(e: Exception) -> type:
    """PassError (PassInputError for bad input), also of the project error type the pass raised.

    So ``except PolicyError`` and ``except PassError`` both catch a pass's policy error.
    """
    parent = PassInputError if isinstance(e, ValueError) else PassError
    base = type(e)
    if not isinstance(e, LowRankError) or isinstance(e, PassError):
        return parent
    if base not in _COMBINED:
        _COMBINED[base] = type(base.__name__, (parent, base), {"__module__": base.__module__})
    return _COMBINED[base]


def _get_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _signature(gm: fx.GraphModule) -> dict[str, str]:
    return {n.name: f"{n.op} {n.target} {n.args} {n.kwargs}" for n in gm.graph.nodes}


def _node_line(node: fx.Node) -> str:
    target = getattr(node.target, "__name__", node.target)
    return f"{node.name} = {node.op}[{target}]"


def diff_nodes(before: dict[str, str], gm: fx.GraphModule) -> dict[str, list[str]]:
    after = _signature(gm)
    return {
        "added": [n for n in after if n not in before],
        "removed": [n for n in before if n not in after],
        "rewritten": [n for n in after if n in before and before[n] != after[n]],
    }


def render_dump(title: str, header: list[str], gm: fx.GraphModule) -> str:
    lines = [f"// {title}"] + [f"// {h}" for h in header] + ["", str(gm.graph)]
    return "\n".join(lines) + "\n"


class PassManager:
    """Runs a pipeline on a graph module: each pass, then lint, then the dump."""

    def __init__(self, pipeline: Pipeline | str, *, dump_dir: str | os.PathLike | None = None,
                 verify: bool = True, on_pass: Callable[[str, PassResult], None] | None = None,
                 first_index: int = 1):
        self.pipeline = Pipeline.parse(pipeline) if isinstance(pipeline, str) else pipeline
        self.pipeline.validate()
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.verify = verify
        self.on_pass = on_pass
        self.first_index = first_index  # dump numbering, to continue an earlier pipeline's dumps
        self.results: list[tuple[PassSpec, PassResult]] = []
        self._html: HtmlDump | None = None  # made by run() when there is a dump_dir

    def _dump(self, index: int, name: str, text: str, gm: fx.GraphModule, **page) -> None:
        if self.dump_dir is not None:
            write_atomic(self.dump_dir / f"{index:02d}-{name}.txt", text)
            self._html.page(index, name, gm, **page)

    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        """Run every pass; if one fails, its swaps and those of the passes before it are undone
        and every parameter's ``requires_grad`` restored, so the model is as it was."""
        mark = len(gm.meta.get(G.SWAPS, []))
        root = G.model_of(gm) or gm
        flags = [(p, p.requires_grad) for p in root.parameters()]
        try:
            return self._run(gm)
        except BaseException:
            G.undo_swaps(gm, since=mark)  # passes rewrite ``gm`` in place, so its journal holds every swap
            for p, flag in flags:
                p.requires_grad_(flag)
            raise

    @staticmethod
    def _header(step, total, done, result, changes, gm) -> list[str]:
        header = [
            f"step {step} of {total}" + (f", after: {', '.join(done)}" if done else ""),
            f"modified: {'yes' if result.modified else 'no'}",
            f"stats: {result.stats}",
            f"nodes: +{len(changes['added'])} added, -{len(changes['removed'])} removed, "
            f"~{len(changes['rewritten'])} rewritten",
        ]
        nodes = {n.name: n for n in gm.graph.nodes}
        header += [f"  {line}" for line in result.report]
        header += [f"  + {_node_line(nodes[n])}" for n in changes["added"]]
        header += [f"  - {n}" for n in changes["removed"]]
        header += [f"  ~ {_node_line(nodes[n])}" for n in changes["rewritten"]]
        return header

    def _run(self, gm: fx.GraphModule) -> fx.GraphModule:
        if self.dump_dir is not None:
            make_dir(self.dump_dir, "dump_dir")
            self._html = HtmlDump(self.dump_dir, self.first_index, write_atomic)
        if self.dump_dir is not None and self.first_index == 1:
            tracer = gm.meta.get(G.TRACER, "?")
            self._dump(0, "trace", render_dump("trace", [f"tracer: {tracer}", f"pipeline: {self.pipeline}"], gm), gm,
                       title=f"traced with {tracer}", stats={"tracer": tracer, "pipeline": str(self.pipeline)})
        done: list[str] = []
        total = len(self.pipeline.passes)
        for step, spec in enumerate(self.pipeline.passes, start=1):
            index = self.first_index + step - 1
            before = _signature(gm)
            try:
                result = get_pass(spec.name).fn(gm, **spec.options)
                if not isinstance(result, PassResult):
                    raise TypeError(f"returned {type(result).__name__}, not PassResult")
                if self.verify:
                    lint(result.gm)
            except Exception as e:
                after = f" (after {', '.join(done)})" if done else " (the first pass)"
                raise _error_type(e)(f"pass {spec.name!r}, step {step} of {total}{after}, failed: {e}",
                           pass_name=spec.name, before=tuple(done)) from e
            gm = result.gm
            self.results.append((spec, result))
            changes = diff_nodes(before, gm)
            if self.dump_dir is not None:  # the text costs a pass over the graph: only when written
                self._dump(index, spec.name, render_dump(f"after pass {spec}", self._header(
                    step, total, done, result, changes, gm), gm), gm, title=str(spec), stats=result.stats,
                    report=result.report, changes=changes, before=before, modified=result.modified)
            if self.on_pass is not None:
                self.on_pass(spec.name, result)
            done.append(spec.name)
        return gm
