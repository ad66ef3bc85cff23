"""``lint(gm)``: the checks the pass manager runs after every pass.

``fx.Graph.lint``; every ``call_module`` / ``get_attr`` target resolves; the graph and the
user's model hold the same module objects at each target; the generated code compiles.
"""

from __future__ import annotations

import torch.fx as fx

from .errors import LintError
from .passes.helpers import graph as G


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
            obj = (
                gm.get_submodule(node.target)
                if node.op == "call_module"
                else _get_attr(gm, node.target)
            )
        except AttributeError as e:
            raise LintError(
                f"node {node.name} refers to {node.target!r}, which does not exist: {e}"
            ) from e
        if node.op == "call_module" and model is not None and model is not gm:
            try:
                in_model = model.get_submodule(node.target)
            except AttributeError:
                continue  # the tracer's own containers (torch.export) have no model counterpart
            if in_model is not obj:
                raise LintError(
                    f"graph and model disagree at {node.target!r}: graph holds "
                    f"{type(obj).__name__}, "
                    f"model holds {type(in_model).__name__}"
                )
    try:
        gm.recompile()
    except Exception as e:
        raise LintError(f"graph does not compile to Python: {e}") from e


def _get_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
