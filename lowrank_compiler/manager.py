"""``PassManager``: runs a pipeline (``pipeline_text``), verifies the graph and dumps it.

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
from pathlib import Path
from typing import Callable

import torch.fx as fx

from .dumps import DumpWriter, diff_nodes, dump_header, render_dump, signature
from .errors import pass_error_type
from .lint import lint
from .passes import PassResult, get_pass
from .passes.helpers import graph as G
from .pipeline_text import PassSpec, Pipeline


class PassManager:
    """Runs a pipeline on a graph module: each pass, then lint, then the dump."""

    def __init__(
        self,
        pipeline: Pipeline | str,
        *,
        dump_dir: str | os.PathLike | None = None,
        verify: bool = True,
        on_pass: Callable[[str, PassResult], None] | None = None,
        first_index: int = 1,
    ):
        self.pipeline = Pipeline.parse(pipeline) if isinstance(pipeline, str) else pipeline
        self.pipeline.validate()
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.verify = verify
        self.on_pass = on_pass
        self.first_index = first_index  # dump numbering, to continue an earlier pipeline's dumps
        self.results: list[tuple[PassSpec, PassResult]] = []
        self._dumps: DumpWriter | None = None  # made by run() when there is a dump_dir

    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        """Run every pass; if one fails, its swaps and those of the passes before it are undone
        and every parameter's ``requires_grad`` restored, so the model is as it was."""
        mark = len(gm.meta.get(G.SWAPS, []))
        root = G.model_of(gm) or gm
        flags = [(p, p.requires_grad) for p in root.parameters()]
        try:
            return self._run(gm)
        except BaseException:
            gm.meta.pop(G.DUMPS, None)
            G.undo_swaps(
                gm, since=mark
            )  # passes rewrite ``gm`` in place, so its journal holds every swap
            for p, flag in flags:
                p.requires_grad_(flag)
            raise

    def _run(self, gm: fx.GraphModule) -> fx.GraphModule:
        dumps = None
        if self.dump_dir is not None:
            first = 0 if self.first_index == 1 else self.first_index
            dumps = self._dumps = DumpWriter(self.dump_dir, first)
            gm.meta[G.DUMPS] = (
                dumps.onnx
            )  # an export-onnx pass numbers its ONNX passes after itself
        if dumps is not None and self.first_index == 1:
            tracer = gm.meta.get(G.TRACER, "?")
            dumps.fx(
                dumps.reserve(),
                "trace",
                render_dump("trace", [f"tracer: {tracer}", f"pipeline: {self.pipeline}"], gm),
                gm,
                title=f"traced with {tracer}",
                stats={"tracer": tracer, "pipeline": str(self.pipeline)},
            )
        done: list[str] = []
        total = len(self.pipeline.passes)
        for step, spec in enumerate(self.pipeline.passes, start=1):
            index = dumps.reserve() if dumps is not None else None
            before = signature(gm)
            if dumps is not None:
                dumps.snapshot(gm)
            try:
                result = get_pass(spec.name).fn(gm, **spec.options)
                if not isinstance(result, PassResult):
                    raise TypeError(f"returned {type(result).__name__}, not PassResult")
                if self.verify:
                    lint(result.gm)
            except Exception as e:
                after = f" (after {', '.join(done)})" if done else " (the first pass)"
                raise pass_error_type(e)(
                    f"pass {spec.name!r}, step {step} of {total}{after}, failed: {e}",
                    pass_name=spec.name,
                    before=tuple(done),
                ) from e
            gm = result.gm
            self.results.append((spec, result))
            changes = diff_nodes(before, gm)
            if dumps is not None:  # the text costs a pass over the graph: only when written
                dumps.fx(
                    index,
                    spec.name,
                    render_dump(
                        f"after pass {spec}",
                        dump_header(step, total, done, result, changes, gm),
                        gm,
                    ),
                    gm,
                    title=str(spec),
                    stats=result.stats,
                    report=result.report,
                    changes=changes,
                    before=before,
                    modified=result.modified,
                )
            if self.on_pass is not None:
                self.on_pass(spec.name, result)
            done.append(spec.name)
        gm.meta.pop(G.DUMPS, None)
        return gm
