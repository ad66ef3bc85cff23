"""The graph the passes rewrite, and the helpers every pass shares.

The IR is a ``torch.fx.GraphModule`` at module granularity: each linear layer of the
user's model is one ``call_module`` node whose target is the layer's fully-qualified
name, and the GraphModule holds *the same module objects* as the model. The model
itself (which keeps its class, ``generate`` and loss) is the thing returned to users;
the graph is the view the passes analyse, rewrite and dump. ``swap_module`` keeps the
two in step, and the pass manager's lint checks they agree after every pass.

Keys used in ``gm.meta`` and ``node.meta`` are namespaced ``lowrank_compiler.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...runtime.layers.linear_kinds import is_conv1d
from ...runtime.layers.protocol import is_quantized_linear

MODEL = "lowrank_compiler.model"  # gm.meta: the user's nn.Module
TRACER = "lowrank_compiler.tracer"  # gm.meta: "export" | "fx" | "modules"
SWAPS = "lowrank_compiler.swaps"  # gm.meta: [(root, fqn, original module)], for rollback
LINEARS = "lowrank_compiler.linears"  # gm.meta: [LinearOp] found by find-linears
LINEAR = "lowrank_compiler.linear"  # node.meta: LinearOp of a linear-op node
SELECTED = "lowrank_compiler.selected"  # node.meta: True when the policy targets it
ADAPTER = "lowrank_compiler.adapter"  # node.meta: fqn of the adapter layer a node belongs to
EXAMPLE = "lowrank_compiler.example"  # gm.meta: (args, kwargs) the model was exported with
CALL = "lowrank_compiler.call"  # node.meta: name of the call_module node an inlined node replaced
CALIBRATION = (
    "lowrank_compiler.calibration"  # gm.meta: the batches compile(calibration=...) was given
)
DUMPS = (
    "lowrank_compiler.dumps"  # gm.meta, while a pass manager with dumps runs: the ONNX stage's dump
)
MOMENTS = "lowrank_compiler.moments"  # gm.meta: {layer: input second moment [K, K]} from calibrate

# call_function targets that compute a linear op on a weight tensor
FUNCTIONAL_LINEARS = (F.linear, torch._C._nn.linear, torch.ops.aten.linear.default)


@dataclass(frozen=True)
class LinearOp:
    """One linear layer as found in the graph."""

    name: str  # fully-qualified module name (for functional ops: the weight's owner path)
    kind: str  # "linear" | "conv1d" | "functional"
    in_features: int
    out_features: int
    calls: int  # graph nodes calling it (a shared layer is called more than once)
    status: str  # "selected" | "excluded" | "output-head" | "not-targeted" | "functional"


class LeafTracer(fx.Tracer):
    """symbolic_trace's tracer; GPT-2's Conv1D and quantized linears are leaves like nn.Linear."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_conv1d(m) or is_quantized_linear(m) or super().is_leaf_module(m, qualname)


def model_of(gm: fx.GraphModule) -> nn.Module | None:
    return gm.meta.get(MODEL)


def module_aliases(root: nn.Module, module: nn.Module) -> list[str]:
    """Every name ``module`` is reachable by under ``root`` (``self.b = self.a`` gives two), in
    order, without repeats: a swap must cover them all, or an alias keeps the old layer."""
    return list(
        dict.fromkeys(n for n, m in root.named_modules(remove_duplicate=False) if m is module and n)
    )


def swap_module(gm: fx.GraphModule, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in both the graph module and the user's model.

    Returns the module it replaced; the swap is journaled so a failed compile can undo it.
    """
    old = gm.get_submodule(name)
    model = model_of(gm)
    journal = gm.meta.setdefault(SWAPS, [])
    for root in (model, gm) if model is not None and model is not gm else (gm,):
        aliases = module_aliases(root, old) or [name]
        if root is gm:
            _repoint_shared_tensors(gm, old, aliases)
        for alias in aliases:
            root.set_submodule(alias, new)
            journal.append((root, alias, old))
    return old


def _repoint_shared_tensors(gm: fx.GraphModule, old: nn.Module, aliases: list[str]) -> None:
    """Keep other ops' reads of ``old``'s tensors working once ``old`` is replaced.

    A tied weight (``head.weight = emb.weight``) is one tensor with two owners; torch.export
    names it once, so the embedding's lookup may read ``get_attr head.weight``. Such nodes
    are pointed at another owner of the same tensor outside ``old`` (``emb.weight``), or,
    where there is none, at the tensor itself kept on the graph module's root."""
    prefixes = tuple(f"{a}." for a in aliases)
    reads = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target.startswith(prefixes)]
    if not reads:
        return
    owners: dict[int, str] = {}
    for path, tensor in [
        *gm.named_parameters(remove_duplicate=False),
        *gm.named_buffers(remove_duplicate=False),
    ]:
        if not path.startswith(prefixes):
            owners.setdefault(id(tensor), path)
    for node in reads:
        prefix = next(p for p in prefixes if node.target.startswith(p))
        tensor = old
        for part in node.target[len(prefix) :].split("."):
            tensor = getattr(tensor, part)
        target = owners.get(id(tensor))
        if target is None:  # no other owner: keep this tensor on the root, under a name of its own
            target = "shared_" + node.target.replace(".", "_")
            while hasattr(gm, target):
                target += "_"
            if isinstance(tensor, nn.Parameter):
                gm.register_parameter(target, tensor)
            else:
                gm.register_buffer(target, tensor)
            owners[id(tensor)] = target
        node.target = target


def undo_swaps(gm: fx.GraphModule, since: int = 0) -> None:
    """Restore every module ``swap_module`` replaced (after the first ``since`` swaps), newest
    first."""
    journal = gm.meta.get(SWAPS, [])
    for root, name, old in reversed(journal[since:]):
        root.set_submodule(name, old)
    gm.meta[SWAPS] = journal[:since]


def inline_call(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    """Replace ``call_module`` ``node`` by the ops of its module's forward.

    The module is traced with ``LeafTracer``; its own attributes and submodules keep
    their place under the node's target, so the graph stays runnable and a dump shows
    exactly what the layer computes. Returns the inserted nodes.
    """
    prefix = node.target
    module = gm.get_submodule(prefix)
    sub = LeafTracer(autowrap_modules=()).trace(
        module
    )  # adapter forwards call no math.*: skip patching it (~40% of the time)
    stem = prefix.replace(".", "_")
    env: dict[fx.Node, object] = {}
    inputs = list(node.args) + list(node.kwargs.values())
    inserted: list[fx.Node] = []
    result = None
    with gm.graph.inserting_before(node):
        for n in sub.nodes:
            if n.op == "placeholder":
                if not inputs:
                    raise ValueError(
                        f"cannot inline {prefix}: its forward takes more inputs than the call "
                        "passes"
                    )
                env[n] = inputs.pop(0)
            elif n.op == "get_attr" and not n.users:
                continue  # symbolic tracing leaves unused weight reads behind
            elif n.op == "output":
                result = fx.map_arg(n.args[0], lambda a: env[a])
            else:
                args = fx.map_arg(n.args, lambda a: env[a])
                kwargs = fx.map_arg(n.kwargs, lambda a: env[a])
                target = f"{prefix}.{n.target}" if n.op in ("call_module", "get_attr") else n.target
                new = gm.graph.create_node(n.op, target, args, kwargs, name=f"{stem}_{n.name}")
                new.meta[ADAPTER] = prefix
                new.meta[CALL] = node.name
                env[n] = new
                inserted.append(new)
    node.replace_all_uses_with(result)
    gm.graph.erase_node(node)
    return inserted


def selected_targets(linears: list[LinearOp]) -> list[str] | None:
    """The names of the layers a policy selected (``find-linears``' record), or None when none
    were recorded (a model that was not compiled)."""
    names = [op.name for op in linears if op.status == "selected"]
    return names or None


def linear_nodes(gm: fx.GraphModule, *, selected_only: bool = False) -> list[fx.Node]:
    """Nodes find-linears tagged, in graph order."""
    out = []
    for n in gm.graph.nodes:
        op = n.meta.get(LINEAR)
        if op is None:
            continue
        if selected_only and not n.meta.get(SELECTED):
            continue
        out.append(n)
    return out


def selected_layers(gm: fx.GraphModule) -> dict[str, tuple[LinearOp, list[fx.Node]]]:
    """Selected layer name -> (its LinearOp, the nodes calling it), in graph order."""
    out: dict[str, tuple[LinearOp, list[fx.Node]]] = {}
    for node in linear_nodes(gm, selected_only=True):
        op = node.meta[LINEAR]
        out.setdefault(op.name, (op, []))[1].append(node)
    return out


def inlined_calls(gm: fx.GraphModule) -> dict[tuple[str, str], list[fx.Node]]:
    """(layer name, call) -> the nodes ``inline_call`` inserted for that call, in graph order."""
    groups: dict[tuple[str, str], list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if ADAPTER in node.meta:
            groups.setdefault((node.meta[ADAPTER], node.meta[CALL]), []).append(node)
    return groups


def collapse_call(gm: fx.GraphModule, name: str, nodes: list[fx.Node]) -> fx.Node:
    """Replace an inlined call (``nodes``) by one ``call_module`` node of ``name``; the inverse of
    inline_call."""
    inside = set(nodes)
    inputs = list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in inside))
    outputs = [n for n in nodes if any(u not in inside for u in n.users)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"cannot collapse the inlined call of {name}: it has {len(inputs)} inputs and "
            f"{len(outputs)} outputs outside itself, expected 1 and 1"
        )
    with gm.graph.inserting_before(outputs[0]):
        call = gm.graph.call_module(name, (inputs[0],))
    outputs[0].replace_all_uses_with(call)
    for n in reversed(nodes):
        gm.graph.erase_node(n)
    return call
