"""A compiled model on disk: the directory ``lowrank-compiler compile`` writes and ``fold``,
``export`` and ``inspect`` read.

    lowrank.json        format and version; stage ("compiled" or "folded"); the MODEL record
                        (``ModelSpec``: as given, and resolved); the tracer compile used; the
                        fold's zero-point form and per-layer errors; the base's identity
                        (``adapters.base_identity``, taken right after compile); the state
                        file's sha256 and its tensors' dtypes and shapes
    policy.json         the policy (``Policy.to_dict``)
    state.safetensors   the rewritten layers' tensors: adapter parameters and quantized
                        buffers (compiled), the folded layers' buffers and weights (folded).
                        A float LoRA base is the base model's own weight: not copied, pinned
                        by its identity
    dumps/              graph dumps (``compile --dump``)

The base model's weights are not copied. Loading rebuilds the base from the record,
compiles it with the stored policy and the same tracer, checks it is the base that was
compiled (identity), folds when the stage is "folded", then loads the state, checked
(sha256, names, dtypes, shapes).

The command line writes the directory with ``runtime.files.staged_dir(out, RECORD)``:
under a temporary name beside its target, renamed into place; a failed command leaves
nothing behind, and an older directory of the same kind is replaced only once the new one
is complete.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..adapters import base_identity, identity_mismatch, load_adapters
from ..api import compile, compile_info, fold
from ..policy import Policy
from ..runtime.errors import AdapterError, LowRankError
from ..runtime.files import write_atomic
from ..runtime.layers.int_linear import IntLinear
from ..runtime.layers.protocol import AdapterLayer, is_quantized_linear
from ..tensorfile import read_json_record, read_tensors, spec_of, write_tensors
from .model_spec import LoadedModel, ModelSpec, load_model

FORMAT = "lowrank-compiler-compiled"
VERSION = 1
RECORD, POLICY, STATE, DUMPS = "lowrank.json", "policy.json", "state.safetensors", "dumps"
STAGES = ("compiled", "folded")


@dataclass
class Compiled:
    """A compiled (or folded) model with what rebuilt it."""

    model: nn.Module
    spec: ModelSpec
    policy: Policy
    identity: dict[str, Any]  # of the base, taken after compile
    example_inputs: tuple | None
    example_kwargs: dict | None
    zeros: str | None = None  # the fold's zero-point form, once folded
    record: dict[str, Any] | None = None  # as read from disk

    @property
    def stage(self) -> str:
        return "folded" if compile_info(self.model).fold_errors is not None else "compiled"


def rewritten_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Adapter layers, integer layers, and float layers a fold merged into (outermost only)."""
    info = compile_info(model)
    merged = set((info.fold_errors or {}) if info else ())
    out: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if out and name.startswith(f"{out[-1][0]}."):
            continue  # inside the last layer taken (named_modules is depth-first)
        if isinstance(m, AdapterLayer) or is_quantized_linear(m) or name in merged:
            out.append((name, m))
    return out


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<layer>.<tensor>": t}``: what the model holds beyond its base (views, not copies)."""
    out = {}
    for name, m in rewritten_layers(model):
        float_base = isinstance(m, AdapterLayer) and not is_quantized_linear(m.base)
        for key, t in m.state_dict(keep_vars=True).items():
            if not (float_base and key.startswith("base.")):
                out[f"{name}.{key}"] = t
    return out


def _quiet_step(name: str) -> None:
    pass


def build(
    spec: ModelSpec,
    policy: Policy,
    *,
    tracer: str = "auto",
    dump_dir=None,
    on_step: Callable[[str], None] = _quiet_step,
) -> Compiled:
    """Build the base model ``spec`` names and compile it with ``policy``; ``on_step`` hears each
    step's name."""
    on_step("load model")
    loaded: LoadedModel = load_model(spec)
    on_step("compile")
    model = compile(
        loaded.model,
        policy,
        example_inputs=loaded.example_inputs,
        example_kwargs=loaded.example_kwargs,
        dump_dir=dump_dir,
        trace_mode=tracer,
    )
    identity = base_identity(rewritten_layers(model))
    return Compiled(model, spec, policy, identity, loaded.example_inputs, loaded.example_kwargs)


def save(c: Compiled, directory: Path) -> None:
    """Write ``c`` into an existing, empty directory (use ``staged_dir`` for the atomic whole)."""
    info = compile_info(c.model)
    tensors = state_tensors(c.model)
    write_atomic(directory / POLICY, c.policy.to_json() + "\n")
    digest = write_tensors(directory / STATE, tensors, metadata={"format": FORMAT})
    record = {
        "format": FORMAT,
        "version": VERSION,
        "stage": c.stage,
        "model": c.spec.to_dict(),
        "tracer": info.tracer,
        "policy": POLICY,
        "pipeline": info.pipeline,
        "zeros": c.zeros if c.stage == "folded" else None,
        "fold_errors": info.fold_errors,
        "identity": c.identity,
        "state": {
            "file": STATE,
            "sha256": digest,
            "tensors": {k: spec_of(t) for k, t in tensors.items()},
        },
    }
    write_atomic(
        directory / RECORD, json.dumps(record, indent=1) + "\n"
    )  # last: it vouches for the rest


def fold_compiled(c: Compiled, zeros: str = "split", dump_dir=None) -> Compiled:
    """``c`` with its adapters folded (``api.fold``); ``c`` itself is left as it is."""
    return replace(c, model=fold(c.model, zeros=zeros, dump_dir=dump_dir), zeros=zeros, record=None)


def read_record(directory: Path) -> dict[str, Any]:
    record, path = read_json_record(
        Path(directory),
        RECORD,
        fmt=FORMAT,
        version=VERSION,
        error=LowRankError,
        what="compiled model",
        writer="'lowrank-compiler compile'",
        kind="compiled-model record",
    )
    keys = ("stage", "model", "tracer", "identity", "state")
    if record.get("stage") not in STAGES or any(k not in record for k in keys):
        raise LowRankError(f"{str(path)!r} is damaged: it needs {', '.join(keys)}")
    return record


def load(
    directory: str | os.PathLike,
    *,
    adapters: str | os.PathLike | None = None,
    on_step: Callable[[str], None] = _quiet_step,
) -> Compiled:
    """Rebuild the model a directory describes; ``adapters``: a ``save_adapters`` directory to load
    into a compiled (not folded) one, e.g. trained after ``compile``."""
    directory = Path(directory)
    record = read_record(directory)
    policy = Policy.from_file(directory / POLICY)
    spec = ModelSpec.from_dict(record["model"])
    c = build(spec, policy, tracer=record["tracer"], on_step=on_step)
    on_step("load state")
    problem = identity_mismatch(record["identity"], c.identity)
    if problem:
        hint = (
            "; a factory must build the same weights on every call (seed it, or load them)"
            if spec.kind == "python"
            else ""
        )
        raise AdapterError(
            f"the base model {spec.spec!r} is not the one {str(directory)!r} was compiled from: "
            f"{problem}{hint}"
        )
    if adapters is not None and record["stage"] != "compiled":
        raise LowRankError(
            f"{str(directory)!r} is already folded: load adapters into the compiled directory"
        )
    if record["stage"] == "folded":
        c = fold_compiled(
            c, record.get("zeros") or "split"
        )  # the folded layers' structure; values come next
    _load_state(c.model, directory, record)
    if adapters is not None:
        load_adapters(c.model, adapters)
    if record["stage"] == "folded":
        compile_info(c.model).fold_errors = dict(record.get("fold_errors") or {})
    c.record = record
    return c


def _make_room(model: nn.Module, recorded: dict[str, str]) -> None:
    """A split fold leaves out corrections that are exactly zero, as the rebuilt (untrained) model's
    are: give each layer whose saved state holds one a float32 buffer of the recorded shape to load
    into."""
    for key, spec in recorded.items():
        layer, _, name = key.rpartition(".")
        match = re.fullmatch(r"float32\[(\d+), (\d+)\]", spec)
        if name != "correction" or match is None:
            continue
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            continue  # reported by the comparison that follows
        if isinstance(module, IntLinear) and module.correction is None:
            module.correction = torch.zeros(
                int(match[1]), int(match[2]), device=module.scales.device
            )


def _load_state(model: nn.Module, directory: Path, record: dict) -> None:
    if record["stage"] == "folded":
        _make_room(model, record["state"].get("tensors", {}))
    targets = state_tensors(model)
    expected = {k: spec_of(t) for k, t in targets.items()}
    recorded = record["state"].get("tensors", {})
    if recorded != expected:
        key = next(k for k in list(expected) + list(recorded) if expected.get(k) != recorded.get(k))
        raise AdapterError(
            f"{str(directory)!r}: state tensor {key!r} is {recorded.get(key)} on disk, "
            f"{expected.get(key)} in the rebuilt model"
        )
    tensors = read_tensors(
        directory / STATE,
        sha256=record["state"].get("sha256", ""),
        expected=expected,
        what="state file",
    )
    with torch.no_grad():
        for key, t in targets.items():
            t.copy_(tensors[key])


# --- writing a directory whole --------------------------------------------------------------
__all__ = [
    "Compiled",
    "build",
    "fold_compiled",
    "load",
    "read_record",
    "rewritten_layers",
    "save",
    "state_tensors",
]
