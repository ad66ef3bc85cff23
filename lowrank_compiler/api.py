"""``compile``: trace a model, run the policy's pipeline on it, and hand the model back.

The model is rewritten in place (no second copy of its weights) and returned: it keeps
its class and call signature, and only adapter parameters require grad afterwards.
If any step fails, every module swap is undone and every ``requires_grad`` flag is
restored, so the caller's model is as it was.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch.fx as fx
from torch import nn

from .dumps import next_index
from .manager import PassManager
from .passes.helpers import graph as G
from .passes.helpers.moments import calibration_record
from .pipeline_text import PassSpec, Pipeline
from .policy import Policy
from .runtime.errors import LowRankError, PolicyError
from .runtime.files import check_dir, write_atomic
from .runtime.layers.protocol import AdapterLayer, frozen_tensors
from .runtime.quant.formats import FOLD_ZEROS, check_choice
from .trace import adapter_graph, trace

INFO_ATTR = "lowrank_compiler_info"


@dataclass
class CompileInfo:
    """What ``compile`` did, kept on the model as ``model.lowrank_compiler_info``."""

    policy: Policy | None  # None: compiled from a pipeline of passes
    pipeline: str
    tracer: str  # "export" | "fx" | "modules" (no graph: matched by name)
    linears: list[G.LinearOp]
    stats: dict[str, dict[str, Any]]
    graph: fx.GraphModule | None = field(default=None, repr=False)
    example: tuple[tuple, dict] | None = field(default=None, repr=False)  # (args, kwargs) traced
    fold_errors: dict[str, float] | None = (
        None  # per folded layer: max|y_fold - y| / max|y| on a probe
    )

    def __getstate__(self):
        """Pickling (``torch.save(model)``) leaves the graph out: its generated code does not
        pickle.
        ``fold`` rebuilds a graph of the adapter layers when it finds none."""
        return {**self.__dict__, "graph": None}

    def __deepcopy__(self, memo):
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(
            copy.deepcopy(self.__dict__, memo)
        )  # graph included, mapped onto the copied model
        return new


def _as_policy(policy) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Mapping):
        return Policy.from_dict(policy)
    if isinstance(policy, (str, os.PathLike)):
        return Policy.from_file(policy)
    raise PolicyError(
        f"policy must be a Policy, a dict or a .json/.toml path, got {type(policy).__name__}"
    )


def compile(
    model: nn.Module,
    policy: Policy | Mapping | str | os.PathLike | None = None,
    *,
    example_inputs=None,
    example_kwargs=None,
    calibration=None,
    dump_dir=None,
    trace_mode: str = "auto",
    pipeline: Pipeline | str | None = None,
) -> nn.Module:
    """Rewrite ``model``'s targeted linear layers as ``policy`` says; return the model.

    example_inputs / example_kwargs: one call's arguments; given, the model is traced
        with ``torch.export`` (needed for transformers models), else with ``torch.fx``.
    calibration: batches of real inputs (each a dict of keyword arguments, a tuple, or a
        tensor) for ``quantizer="gptq"``: the float model runs on them once to measure
        each layer's inputs (padding left out where a batch has an ``attention_mask``).
    dump_dir: write ``NN-<pass>.txt`` graph dumps and ``pipeline.txt`` there.
    trace_mode: "auto", "export", "fx" or "modules" (no graph; match modules by name).
    pipeline: instead of a policy, the passes to run (``"find-linears,insert-lora{rank=8}"``), e.g.
        a pass of one's own that inserts a layer kind of one's own; the model then has no policy
        (``fold`` runs ``fold{zeros=...}``).
    """
    policy, dump_dir = _checked_arguments(model, policy, pipeline, calibration, dump_dir)
    batches = list(calibration) if calibration is not None else None
    pipeline = _pipeline_to_run(policy, pipeline, batches)
    gm = trace(model, example_inputs, example_kwargs, trace_mode)
    if batches is not None:
        gm.meta[G.CALIBRATION] = batches
    gm, manager = _run_or_restore(model, gm, pipeline, dump_dir)
    gm.meta[G.SWAPS] = []  # committed: nothing to undo
    info = CompileInfo(
        policy=policy,
        pipeline=str(pipeline),
        tracer=gm.meta[G.TRACER],
        linears=list(gm.meta.get(G.LINEARS, [])),
        stats={spec.name: result.stats for spec, result in manager.results},
        graph=gm,
        example=gm.meta.get(G.EXAMPLE),
    )
    object.__setattr__(model, INFO_ATTR, info)  # a plain attribute, never a submodule
    return model


def _checked_arguments(
    model, policy, pipeline, calibration, dump_dir
) -> tuple[Policy | None, Path | None]:
    """``compile``'s arguments checked: the policy as a ``Policy`` (None with a pipeline) and
    ``dump_dir`` as a usable ``Path`` (or None)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile expects a torch.nn.Module, got {type(model).__name__}")
    if pipeline is not None and policy is not None:
        raise PolicyError("compile takes a policy or a pipeline, not both")
    if pipeline is None:
        policy = Policy() if policy is None else _as_policy(policy)
    compiled = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
    if compiled:
        raise LowRankError(
            f"model is already compiled: {len(compiled)} layer(s) hold adapters "
            f"({', '.join(compiled[:3])}"
            f"{', ...' if len(compiled) > 3 else ''}); compile the original model instead"
        )
    if dump_dir is not None:
        dump_dir = Path(dump_dir)
        check_dir(dump_dir, "dump_dir")
    if policy is not None and policy.quantizer == "gptq" and calibration is None:
        raise PolicyError(
            "quantizer='gptq' needs calibration data: compile(model, policy, calibration=[batch, "
            "...]), "
            "each batch what the model takes, e.g. a tokenizer's output"
        )
    return policy, dump_dir


def _pipeline_to_run(policy: Policy | None, pipeline, batches: list | None) -> Pipeline:
    """The pipeline given (parsed from its text), else the policy's; GPTQ's carries the record
    of the calibration batches."""
    if policy is None:
        return Pipeline.parse(pipeline) if isinstance(pipeline, str) else pipeline
    gptq = batches is not None and policy.quantizer == "gptq"
    return policy.pipeline(calibration_record(batches) if gptq else None)


def _run_or_restore(
    model: nn.Module, gm: fx.GraphModule, pipeline: Pipeline, dump_dir: Path | None
) -> tuple[fx.GraphModule, PassManager]:
    """Run the pipeline on ``gm`` and freeze the base; if anything fails, undo every module swap
    and restore every ``requires_grad`` flag before the error goes on."""
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
    finally:  # the model keeps its graph; not the batches or the [K, K] statistics
        gm.meta.pop(G.CALIBRATION, None)
        gm.meta.pop(G.MOMENTS, None)
    return gm, manager


def _freeze_base(model: nn.Module) -> None:
    """Only adapter weights train: embeddings, norms and bases are frozen."""
    adapters = {
        id(p)
        for m in model.modules()
        if isinstance(m, AdapterLayer)
        for p in m.adapter_parameters()
    }
    for p in model.parameters():
        p.requires_grad_(id(p) in adapters)


def compile_info(model: nn.Module) -> CompileInfo | None:
    return getattr(model, INFO_ATTR, None)


def fold(model: nn.Module, *, zeros: str = "split", dump_dir=None) -> nn.Module:
    """A new model with every adapter folded into its base layer; ``model`` is left as it is.

    QA-LoRA layers become ``IntLinear`` with the same codes: ``zeros="split"`` (integer
    zero points plus an exact correction; the default), ``"float"`` (real zero points)
    or ``"round"`` (integer zero points alone: lossy, for comparison). Layers trained with
    ``zero_point="int"`` fold to integer zero points exactly whatever ``zeros`` says, and
    LR-QAT layers to their trained integer codes (bit-identical to their forward), also
    whatever ``zeros`` says.
    LoRA merges into ``nn.Linear``; QLoRA merges and requantizes (the peers' way).
    Per-layer errors on a probe batch: ``compile_info(new).fold_errors``, and the summary.
    The new model shares the tensors its layers declare never written (``frozen_tensors``: the
    integer codes) with ``model``; everything else is a copy.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold expects a torch.nn.Module, got {type(model).__name__}")
    info = compile_info(model)
    if info is None:
        raise LowRankError(
            "model was not produced by lowrank_compiler.compile: there is nothing to fold"
        )
    if not any(isinstance(m, AdapterLayer) for m in model.modules()):
        raise LowRankError(
            "model holds no adapter layers (already folded, or compiled with method='rtn')"
        )
    check_choice(zeros, FOLD_ZEROS, "zeros")
    if dump_dir is not None:
        check_dir(Path(dump_dir), "dump_dir")
    if info.policy is not None:
        pipeline = info.policy.fold_pipeline(zeros)
    else:
        pipeline = Pipeline((PassSpec("fold", {"zeros": zeros}),))
    first = len(Pipeline.parse(info.pipeline).passes) + 1
    if dump_dir is not None:
        first = max(first, next_index(Path(dump_dir)))
    with (
        warnings.catch_warnings()
    ):  # torch.export's graph modules warn about pytree internals on copy
        warnings.simplefilter("ignore", FutureWarning)
        # the graph in its info is copied along and points at the copy's modules; the integer
        # codes are shared, not copied: uint8 buffers nothing writes (they cannot train)
        new = copy.deepcopy(model, frozen_tensors(model))
    new_info = compile_info(new)
    if new_info.graph is None:  # unpickled: no graph came along
        new_info.graph = adapter_graph(new)
    manager = PassManager(pipeline, dump_dir=dump_dir, first_index=first)
    new_info.graph = manager.run(new_info.graph)
    new.requires_grad_(False)
    stats = manager.results[-1][1].stats
    new_info.pipeline = f"{info.pipeline},{pipeline}"
    new_info.stats = {**info.stats, "fold": stats}
    new_info.fold_errors = dict(stats["rel_err"])
    new_info.graph.meta[G.SWAPS] = []
    return new


__all__ = ["CompileInfo", "compile", "compile_info", "fold"]
