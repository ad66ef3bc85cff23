"""Turn a model into the module-level FX graph the passes work on.

Three tracers, chosen by ``mode``:

- ``"export"`` (the default when example inputs are given): ``torch.export.export``
  (non-strict), which handles transformers 5 models. Its ``aten.linear`` /
  ``aten.addmm`` nodes that read a linear layer's own weight are folded back into one
  ``call_module`` node per call, so the graph speaks in the model's module names.
- ``"fx"`` (the default without inputs): ``torch.fx`` symbolic tracing with
  ``nn.Linear`` and GPT-2 ``Conv1D`` as leaves; works on plain hand-written models.
- ``"modules"``: no tracing; every linear module becomes one ``call_module`` node fed
  by its own placeholder. For models neither tracer handles; the summary flags it.

The returned GraphModule shares the model's module objects and records the model in
``gm.meta["lowrank_compiler.model"]``.
"""

from __future__ import annotations

import inspect
import os
import traceback

import torch
import torch.fx as fx
from torch import nn

from .errors import TraceError
from .passes.helpers import graph as G
from .runtime.layers.linear_kinds import is_conv1d, is_linear_module
from .runtime.layers.protocol import AdapterLayer

MODES = ("auto", "export", "fx", "modules")
_LIB_DIRS = tuple(os.path.dirname(m.__file__) for m in (torch, fx))
_HERE = os.path.dirname(os.path.abspath(__file__))
# frames of the tracing machinery itself are never "where tracing failed"
_OWN_FILES = {os.path.join(_HERE, f) for f in ("trace.py", "api.py")} | {
    os.path.abspath(G.__file__)
}


def trace(
    model: nn.Module, example_inputs=None, example_kwargs=None, mode: str = "auto"
) -> fx.GraphModule:
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace expects a torch.nn.Module, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"trace_mode must be one of {MODES}, got {mode!r}")
    if isinstance(model, nn.Module) and is_linear_module(model):
        raise TraceError(
            f"the model is a bare {type(model).__name__}: layers are rewritten by module name, and "
            "the root "
            f"has none. Wrap it, e.g. nn.Sequential(layer), and compile that"
        )
    if mode == "auto":
        mode = "export" if (example_inputs is not None or example_kwargs) else "fx"
    if mode == "export":
        if example_inputs is None and not example_kwargs:
            raise TraceError(
                "trace_mode='export' needs example_inputs (or example_kwargs) to run the model once"
            )
        gm = _export(model, example_inputs, example_kwargs)
    elif mode == "fx":
        gm = _symbolic(model)
    else:
        gm = _modules_only(model)
    gm.meta[G.MODEL] = model
    gm.meta[G.TRACER] = mode
    return gm


def _where(e: BaseException) -> str:
    """The innermost frame of the traceback that is the user's code, not torch's."""
    frames = [
        f
        for f in traceback.extract_tb(e.__traceback__)
        if not f.filename.startswith(_LIB_DIRS) and os.path.abspath(f.filename) not in _OWN_FILES
    ]
    if not frames:
        return "inside torch"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}"


_ADVICE = (
    "pass example_inputs=(...) (and example_kwargs) to trace with torch.export, "
    "or trace_mode='modules' to match linear modules by name without a graph"
)


def _symbolic(model: nn.Module) -> fx.GraphModule:
    try:
        graph = G.LeafTracer().trace(model)
    except Exception as e:
        raise TraceError(
            f"torch.fx symbolic tracing of {type(model).__name__} failed at {_where(e)} "
            f"({type(e).__name__}: {e}). {_ADVICE}"
        ) from e
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    gm.graph.eliminate_dead_code()  # the tracer leaves unused get_attr nodes behind
    gm.recompile()
    return gm


def with_defaults(model: nn.Module, kwargs: dict) -> dict:
    """HF models: trace without a KV cache unless the caller asked for one."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return kwargs
    if "use_cache" in params and "use_cache" not in kwargs:
        kwargs = {**kwargs, "use_cache": False}
    return kwargs


def _export(model: nn.Module, example_inputs, example_kwargs) -> fx.GraphModule:
    args = () if example_inputs is None else example_inputs
    if not isinstance(args, tuple):
        args = tuple(args) if isinstance(args, list) else (args,)
    kwargs = with_defaults(model, dict(example_kwargs or {}))
    modes = {m: m.training for m in model.modules()}
    model.eval()  # the graph is for analysis: no dropout nodes
    config = getattr(torch.fx, "config", None)
    emit = getattr(config, "do_not_emit_stack_traces", None)  # a recent torch.fx setting
    try:
        # the same graph, traced faster: no autograd bookkeeping, and no Python stack captured per
        # node (nothing here reads node.meta["stack_trace"])
        if emit is not None:
            config.do_not_emit_stack_traces = True
        with torch.no_grad():
            ep = torch.export.export(model, args, kwargs, strict=False)
    except Exception as e:
        raise TraceError(
            f"torch.export of {type(model).__name__} failed at {_where(e)} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Check that the example inputs run the "
            "model, "
            f"or pass trace_mode='modules' to match linear modules by name without a graph"
        ) from e
    finally:
        if emit is not None:
            config.do_not_emit_stack_traces = emit
        for m, training in modes.items():  # each module's own flag, not the root's
            m.training = training
    gm = ep.module()
    gm.meta[G.EXAMPLE] = (args, kwargs)
    _fold_linear_calls(gm, model)
    return gm


def _linear_owner(model: nn.Module, node: fx.Node, weight: torch.Tensor) -> str | None:
    """The name of the linear module whose forward this aten node is."""
    names = []
    stack = node.meta.get("nn_module_stack") or {}
    if stack:  # the module whose forward ran this op: right even when weights are tied
        names.append(list(stack.values())[-1][0])
    w = node.args[2] if node.target is torch.ops.aten.addmm.default else node.args[1]
    if isinstance(w, fx.Node) and w.op == "get_attr" and "." in w.target:
        names.append(w.target.rsplit(".", 1)[0])
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if not is_linear_module(module) or module.weight is not weight:
            continue
        if (node.target is torch.ops.aten.addmm.default) == is_conv1d(module):
            return name
    return None


def _fold_linear_calls(gm: fx.GraphModule, model: nn.Module) -> None:
    """Replace ``aten.linear(x, W, b)`` / ``aten.addmm(b, x, W)`` on a module's weight by
    ``call_module``."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (
            torch.ops.aten.linear.default,
            torch.ops.aten.addmm.default,
        ):
            continue
        is_addmm = node.target is torch.ops.aten.addmm.default
        w = node.args[2] if is_addmm else node.args[1]
        if not (isinstance(w, fx.Node) and w.op == "get_attr"):
            continue
        try:
            weight = gm.get_parameter(w.target)
        except AttributeError:
            continue
        name = _linear_owner(model, node, weight)
        if name is None:
            continue
        module = model.get_submodule(name)
        bias = node.args[0] if is_addmm else (node.args[2] if len(node.args) > 2 else None)
        if (bias is None) != (getattr(module, "bias", None) is None):
            continue  # not the module's own call (bias differs): leave it as a functional op
        gm.set_submodule(name, module)
        x = node.args[1] if is_addmm else node.args[0]
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (x,))
        call.meta.update(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def adapter_graph(model: nn.Module) -> fx.GraphModule:
    """A graph of one ``call_module`` per adapter layer, for a model whose traced graph was lost."""
    gm = _modules_only(model, lambda m: isinstance(m, AdapterLayer))
    gm.meta[G.MODEL] = model
    gm.meta[G.TRACER] = "modules"
    return gm


def _modules_only(model: nn.Module, keep=is_linear_module) -> fx.GraphModule:
    graph = fx.Graph()
    outputs = []
    for name, module in model.named_modules():
        if keep(module):
            x = graph.placeholder(f"x_{name.replace('.', '_')}")
            outputs.append(graph.call_module(name, (x,)))
    graph.output(tuple(outputs))
    return fx.GraphModule(model, graph, class_name=type(model).__name__)
