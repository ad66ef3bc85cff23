"""What a dump page draws: the parts of the graph a pass rewrote, one per kind.

- ``rewritten_layers`` (the FX passes, and the ONNX graph as exported): the layers the pass
  added nodes to, removed nodes from, or whose nodes changed operator, each drawn whole before
  and after; a layer is a module's dotted name (``Op.layer``).
- ``rewritten_regions`` (the ONNX passes, which rename what they fuse: ``q_proj``, ``k_proj``
  and ``v_proj`` become ``qkv_proj``): each connected group of changed nodes, the removed and
  rewritten ones before, the added and rewritten ones after.

Both group what they find by *kind* (the operators before and after, names and shapes left
out), so a 1B model's dump draws each kind once, with the names of the others like it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .dump_ops import Op


@dataclass
class Drawing:
    name: str  # the layer (or region) drawn
    before: set[str]  # its nodes in the graph before the pass
    after: set[str]  # and after
    like: list[str] = field(default_factory=list)  # every layer (region) of its kind, it first


def _kind(ops: dict[str, Op], names: set[str]) -> tuple:
    return tuple(sorted((ops[n].label.split(" [")[0], ops[n].role) for n in names if n in ops))


def _grouped(found: list[Drawing], before: dict[str, Op], after: dict[str, Op]) -> list[Drawing]:
    kinds: dict[tuple, Drawing] = {}
    for d in found:
        key = (_kind(before, d.before), _kind(after, d.after))
        kinds.setdefault(key, d).like.append(d.name)
    return list(kinds.values())


def rewritten_layers(before: list[Op], after: list[Op], changes: dict | None) -> list[Drawing]:
    """The layers a pass changed (module docstring), one per kind, in graph order; shape
    arithmetic does not count as a change."""
    if not changes:
        return []
    was, now = {o.name: o for o in before}, {o.name: o for o in after}

    def real(ops: dict[str, Op], names) -> list[Op]:
        return [ops[n] for n in names if n in ops and not ops[n].shape_only]

    touched = [o.layer for o in real(now, changes.get("added", ()))]
    touched += [o.layer for o in real(was, changes.get("removed", ()))]
    touched += [
        o.layer
        for o in real(now, changes.get("rewritten", ()))
        if o.name in was and (o.label, o.lines) != (was[o.name].label, was[o.name].lines)
    ]
    order = {o.layer: i for i, o in reversed(list(enumerate(after)))}
    layers = sorted({t for t in touched if t}, key=lambda t: order.get(t, len(order)))
    members_before, members_after = _by_layer(before), _by_layer(after)
    found = [
        Drawing(layer, members_before.get(layer, set()), members_after.get(layer, set()))
        for layer in layers
    ]
    return _grouped(found, was, now)


def _by_layer(ops: list[Op]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for o in ops:
        out.setdefault(o.layer, set()).add(o.name)
    return out


def rewritten_regions(before: list[Op], after: list[Op], changes: dict | None) -> list[Drawing]:
    """Each connected group of changed nodes (module docstring), one per kind, in graph order;
    changed nodes of one layer (or of its direct children) are one group."""
    if not changes:
        return []
    was, now = {o.name: o for o in before}, {o.name: o for o in after}
    old = set(changes.get("removed", ())) | set(changes.get("rewritten", ()))
    new = set(changes.get("added", ())) | set(changes.get("rewritten", ()))
    parent = {n: n for n in old | new}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for names, ops in ((old, was), (new, now)):
        for n in names:
            for i in ops[n].inputs if n in ops else ():
                if i in names:
                    parent[root(i)] = root(n)
    # a rewrite that replaces nodes by new ones shares no node with them: join by layer (a
    # new "q_proj.zeros" node joins q_proj's)
    layer = {n: o.layer for n in parent for o in (now.get(n), was.get(n)) if o and o.layer}
    known, outer_of, first = set(layer.values()), {}, {}
    for n, name in layer.items():  # a layer joins its parent only, never a distant ancestor
        up = name.rsplit(".", 1)[0]
        outer_of[n] = up if up != name and up in known else name
        if outer_of[n] in first:
            parent[root(n)] = root(first[outer_of[n]])
        else:
            first[outer_of[n]] = n
    groups: dict[str, set[str]] = {}
    for n in parent:
        groups.setdefault(root(n), set()).add(n)
    order = {o.name: i for i, o in enumerate(after)}
    found = []
    for members in sorted(groups.values(), key=lambda g: min(order.get(n, 1 << 30) for n in g)):
        layers = [outer_of[n] for n in members if n in outer_of]
        name = Counter(layers).most_common(1)[0][0] if layers else sorted(members)[0]
        found.append(Drawing(name, members & old, members & new))
    return _grouped(found, was, now)


__all__ = ["Drawing", "rewritten_layers", "rewritten_regions"]
