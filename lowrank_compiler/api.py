"""``compile``: trace a model, run the policy's pipeline on it, and hand the model back.

The model is rewritten in place (no second copy of its weights) and returned: it keeps
its class and call signature, and only adapter parameters require grad afterwards.
If any step fails, every module swap is undone and every ``requires_grad`` flag is
restored, so the caller's model is as it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch.fx as fx
from torch import nn

from .pipeline import PassManager, Pipeline, write_atomic
from .policy import Policy
from .runtime import graph as G
from .runtime.errors import LowRankError, PolicyError
from .runtime.layers import AdapterLayer
from .trace import trace

INFO_ATTR = "lowrank_compiler_info"


@dataclass
class CompileInfo:
    """What ``compile`` did, kept on the model as ``model.lowrank_compiler_info``."""

    policy: Policy
    pipeline: str
    tracer: str  # "export" | "fx" | "modules" (no graph: matched by name)
    linears: list[G.LinearOp]
    stats: dict[str, dict[str, Any]]
    graph: fx.GraphModule | None = field(default=None, repr=False)


def _as_policy(policy) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Mapping):
        return Policy.from_dict(policy)
    if isinstance(policy, (str, os.PathLike)):
        return Policy.from_file(policy)
    raise PolicyError(f"policy must be a Policy, a dict or a .json/.toml path, got {type(policy).__name__}")


def compile(model: nn.Module, policy: Policy | Mapping | str | os.PathLike | None = None, *,
            example_inputs=None, example_kwargs=None, dump_dir=None, trace_mode: str = "auto") -> nn.Module:
    """Rewrite ``model``'s targeted linear layers as ``policy`` says; return the model.

    example_inputs / example_kwargs: one call's arguments; given, the model is traced
        with ``torch.export`` (needed for transformers models), else with ``torch.fx``.
    dump_dir: write ``NN-<pass>.txt`` graph dumps and ``pipeline.txt`` there.
    trace_mode: "auto", "export", "fx" or "modules" (no graph; match modules by name).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile expects a torch.nn.Module, got {type(model).__name__}")
    policy = Policy() if policy is None else _as_policy(policy)
    compiled = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
    if compiled:
        raise LowRankError(
            f"model is already compiled: {len(compiled)} layer(s) hold adapters ({', '.join(compiled[:3])}"
            f"{', ...' if len(compiled) > 3 else ''}); compile the original model instead"
        )
    if dump_dir is not None:
        dump_dir = Path(dump_dir)
        if dump_dir.exists() and not dump_dir.is_dir():
            raise NotADirectoryError(f"dump_dir {str(dump_dir)!r} exists and is not a directory")
    pipeline = policy.pipeline()
    gm = trace(model, example_inputs, example_kwargs, trace_mode)
    grad_flags = {id(p): p.requires_grad for p in model.parameters()}
    manager = PassManager(pipeline, dump_dir=dump_dir)
    try:
        gm = manager.run(gm)
        _freeze_base(model)
        if dump_dir is not None:
            write_atomic(dump_dir / "pipeline.txt", f"{pipeline}\n")
    except BaseException:
        G.undo_swaps(gm)
        for p in model.parameters():
            if id(p) in grad_flags:
                p.requires_grad_(grad_flags[id(p)])
        raise
    gm.meta[G.SWAPS] = []  # committed: nothing to undo
    info = CompileInfo(
        policy=policy,
        pipeline=str(pipeline),
        tracer=gm.meta[G.TRACER],
        linears=list(gm.meta.get(G.LINEARS, [])),
        stats={spec.name: result.stats for spec, result in manager.results},
        graph=gm,
    )
    object.__setattr__(model, INFO_ATTR, info)  # a plain attribute, never a submodule
    return model


def _freeze_base(model: nn.Module) -> None:
    """Only adapter weights train: embeddings, norms and bases are frozen."""
    adapters = {id(p) for m in model.modules() if isinstance(m, AdapterLayer) for p in m.adapter_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in adapters)


def compile_info(model: nn.Module) -> CompileInfo | None:
    return getattr(model, INFO_ATTR, None)


__all__ = ["CompileInfo", "Pipeline", "compile", "compile_info"]
