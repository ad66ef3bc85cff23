"""The text of the pass dumps: what a pass added, removed and rewrote, then the graph.

``NN-<pass>.txt`` starts with a header (``// step 2 of 3, after: find-linears``, whether
the pass modified the graph, its stats, node counts, the pass's own report lines, one line
per added / removed / rewritten node) and then ``str(gm.graph)``. A node is *rewritten*
when it keeps its name but changes its op, target, arguments or keyword arguments.
"""

from __future__ import annotations

import torch.fx as fx

from .passes import PassResult


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
