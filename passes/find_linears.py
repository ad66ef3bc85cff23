"""find-linears: tag every linear op with its module name and select the policy's targets.

Linear ops are ``call_module`` nodes whose module is an ``nn.Linear`` or GPT-2
``Conv1D`` (the tracer turns torch.export's ``aten.linear``/``aten.addmm`` into such
nodes), plus functional ``F.linear`` calls on a raw parameter, which are reported but
cannot be rewritten (no module to swap). Selection rules:

- ``target=all-linear`` selects every linear layer except the output head
  (``get_output_embeddings()``, a layer named ``lm_head``, or one whose weight is tied to an
  ``nn.Embedding``'s), as PEFT does;
- other patterns (see ``helpers.select``) must each match at least one layer, and an
  ``exclude`` pattern must match at least one layer: a typo is an error, not a no-op.

The graph is not changed; nodes get ``node.meta["lowrank_compiler.linear"]`` and
``["lowrank_compiler.selected"]`` and the graph module a list of ``LinearOp``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn

from ..runtime.layers.linear_kinds import is_linear_module, linear_shape
from .helpers import graph as G
from .helpers.select import ALL_LINEAR, TargetError, check_pattern, matches
from .registry import PassResult, register_pass

Hit = Callable[[str, str], bool]  # does a pattern match a layer (by any of its names)


def _as_tuple(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _output_heads(model: nn.Module | None) -> set[str]:
    if model is None:
        return set()
    heads = {
        name for name, _ in model.named_modules() if name == "lm_head" or name.endswith(".lm_head")
    }
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            head = getter()
        except Exception:  # some models raise NotImplementedError here
            head = None
        if isinstance(head, nn.Module):
            heads |= {name for name, m in model.named_modules() if m is head}
    # a hand-written model's head tied to its embedding (``head.weight = emb.weight``, nanoGPT)
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    heads |= {
        name
        for name, m in model.named_modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor)
        and id(m.weight) in tables
        and not isinstance(m, nn.Embedding)
    }
    return heads


def _aliases(model: nn.Module | None, names: list[str]) -> dict[str, tuple[str, ...]]:
    """Every name each found layer is reachable by in the model (``self.b = self.a``)."""
    if model is None:
        return {}
    by_id: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        by_id.setdefault(id(m), []).append(n)
    out = {}
    for name in names:
        try:
            out[name] = tuple(by_id.get(id(model.get_submodule(name)), [name]))
        except (
            AttributeError
        ):  # functional entries are named after a weight's owner, maybe no module
            pass
    return out


def _functional_op(gm: fx.GraphModule, node: fx.Node) -> tuple[str, int, int] | None:
    """(owner name, in, out) of an ``F.linear(x, <parameter>)`` node, else None."""
    if node.op != "call_function" or node.target not in G.FUNCTIONAL_LINEARS or len(node.args) < 2:
        return None
    w = node.args[1]
    if not isinstance(w, fx.Node) or w.op != "get_attr":
        return None
    try:
        weight = gm.get_parameter(w.target)
    except AttributeError:  # a buffer or a computed tensor: not a layer's weight
        return None
    if weight.dim() != 2:
        return None
    owner = w.target.rsplit(".", 1)[0] if "." in w.target else w.target
    return owner, int(weight.shape[1]), int(weight.shape[0])


def _collect(gm: fx.GraphModule) -> dict[str, tuple[str, int, int, list[fx.Node]]]:
    """name -> (kind, in, out, nodes). Module calls first; functional uses of a weight whose
    owner is also called as a module are listed apart, as ``<owner> (F.linear)``."""
    modules: dict[str, tuple[str, int, int, list[fx.Node]]] = {}
    functional: dict[str, tuple[str, int, int, list[fx.Node]]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if is_linear_module(module):
                shape = linear_shape(module)
                modules.setdefault(
                    node.target, (shape.kind, shape.in_features, shape.out_features, [])
                )[3].append(node)
        elif (fn := _functional_op(gm, node)) is not None:
            owner, k, n = fn
            functional.setdefault(owner, ("functional", k, n, []))[3].append(node)
    found = dict(modules)
    for owner, entry in functional.items():
        found[f"{owner} (F.linear)" if owner in modules else owner] = entry
    return found


@register_pass(
    "find-linears", "tag linear ops with their module names and select the policy's targets"
)
def find_linears(gm: fx.GraphModule, *, target=(ALL_LINEAR,), exclude=()) -> PassResult:
    target, exclude = _as_tuple(target), _as_tuple(exclude)
    for p in target + exclude:
        if p != ALL_LINEAR:
            check_pattern(p)
    found = _collect(gm)
    if not found:
        raise TargetError(
            "the model has no linear layers (nn.Linear, F.linear or GPT-2 Conv1D) in its traced "
            "graph; "
            "nothing to rewrite"
        )
    aliases = _aliases(G.model_of(gm), list(found))

    def hit(pattern: str, name: str) -> bool:  # a layer reachable by several names matches by any
        return any(matches(pattern, a) for a in aliases.get(name, (name,)))

    status = _statuses(found, target, hit, _output_heads(G.model_of(gm)))
    _check_targets(status, target, hit)
    _exclude(status, exclude, hit)
    _check_selected(status, found, exclude)
    ops = _tag(found, status)
    gm.meta[G.LINEARS] = ops
    return PassResult(gm, False, _stats(G.model_of(gm), ops, found), _report(ops))


def _statuses(found: dict, target: tuple[str, ...], hit: Hit, heads: set[str]) -> dict[str, str]:
    """Each layer's status under ``target``: selected, output-head (left out by all-linear),
    functional (no module to rewrite) or not-targeted."""
    explicit = [p for p in target if p != ALL_LINEAR]
    status: dict[str, str] = {}
    for name, (kind, *_) in found.items():
        explicit_hit = any(hit(p, name) for p in explicit)
        if kind == "functional" and name.endswith(" (F.linear)"):
            status[name] = "functional"  # the module itself is selected (or not) by its own name
        elif ALL_LINEAR in target and not explicit_hit:
            status[name] = (
                "output-head"
                if name in heads
                else ("functional" if kind == "functional" else "selected")
            )
        elif explicit_hit:
            status[name] = "selected"
        else:
            status[name] = "not-targeted"
    return status


def _check_targets(status: dict[str, str], target: tuple[str, ...], hit: Hit) -> None:
    """Some layer is selected, and every explicit target pattern matches a layer (a typo is an
    error, not a no-op)."""
    names, listing = list(status), ", ".join(status)
    unmatched = [p for p in target if p != ALL_LINEAR and not any(hit(p, n) for n in names)]
    if not any(s == "selected" for s in status.values()):
        raise TargetError(
            f"target {list(target)} matches none of the model's {len(names)} linear layers: "
            f"{listing}"
        )
    if unmatched:
        raise TargetError(
            f"target pattern(s) {unmatched} match no linear layer while the others do; "
            f"fix or drop them. Linear layers: {listing}"
        )


def _exclude(status: dict[str, str], exclude: tuple[str, ...], hit: Hit) -> None:
    """Mark the selected layers each exclude pattern matches as excluded; a pattern that matches
    no layer is an error."""
    for p in exclude:
        hits = [n for n in status if hit(p, n)]
        if not hits:
            raise TargetError(
                f"exclude pattern {p!r} matches no linear layer. Linear layers: {', '.join(status)}"
            )
        for n in hits:
            if status[n] == "selected":
                status[n] = "excluded"


def _check_selected(status: dict[str, str], found: dict, exclude: tuple[str, ...]) -> None:
    """What stays selected can be rewritten (no functional call), and something does."""
    bad = [n for n in status if status[n] == "selected" and found[n][0] == "functional"]
    if bad:
        raise TargetError(
            f"layers {bad} are functional F.linear calls on raw parameters: there is no module to "
            "rewrite. "
            f"Wrap the weight in an nn.Linear, or add them to exclude"
        )
    if not any(s == "selected" for s in status.values()):
        raise TargetError(
            f"exclude {list(exclude)} leaves no linear layer selected. Linear layers: "
            f"{', '.join(status)}"
        )


def _tag(found: dict, status: dict[str, str]) -> list[G.LinearOp]:
    """A ``LinearOp`` per layer; each of its nodes is tagged with it and with whether it is
    selected."""
    ops = []
    for name, (kind, k, n, nodes) in found.items():
        op = G.LinearOp(name, kind, k, n, len(nodes), status[name])
        ops.append(op)
        for node in nodes:
            node.meta[G.LINEAR] = op
            node.meta[G.SELECTED] = status[name] == "selected"
    return ops


def _stats(model: nn.Module | None, ops: list[G.LinearOp], found: dict) -> dict:
    """Counts by kind and status, and the linear modules the traced graph never calls."""
    unused = []
    if model is not None:
        unused = [m for m, mod in model.named_modules() if is_linear_module(mod) and m not in found]
    counts = Counter(op.status for op in ops)
    return {
        "linear_layers": len(ops),
        "linear_calls": sum(op.calls for op in ops),
        "kinds": dict(Counter(op.kind for op in ops)),
        **{
            s: counts[s]
            for s in ("selected", "excluded", "output-head", "not-targeted", "functional")
            if counts[s]
        },
        "not_in_graph": unused,
    }


def _report(ops: list[G.LinearOp]) -> list[str]:
    return [
        f"{op.status:12s} {op.name} ({op.kind}, {op.in_features}->{op.out_features}"
        f"{f', {op.calls} calls' if op.calls > 1 else ''})"
        for op in ops
    ]
