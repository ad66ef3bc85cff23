"""Adapters on disk: ``save_adapters(model, dir)`` and ``load_adapters(model, dir)``.

A directory holds two files, both written under a temporary name and renamed:

    adapters.safetensors   every adapter tensor, ``<layer>.lora_A`` (r, in or in/g) and
                           ``<layer>.lora_B`` (out, r)
    adapter_config.json    the policy (``Policy.to_dict``), the tensor file's sha256, and per
                           layer: its settings (kind, in/out features, rank, alpha, bits,
                           group size), its adapter tensors' dtypes and shapes, and the
                           identity of the base it was trained on

A layer's base identity is the dtype and shape of each base tensor and one sha256 over
them: the packed codes, scales and zero points (and bias) of an integer base, the NF4
codes and block scales of a QLoRA base, the frozen weight and bias of a float LoRA base.
Adapters trained on one base are meaningless on another, so ``load_adapters`` refuses a
model whose layers, settings or base weights differ, naming the first layer that does
and what differs; then it checks the file against its recorded sha256 (a truncated or
altered file is an error, not a parser's exception), and its tensors' names, dtypes and
shapes, before copying a single value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .api import compile_info
from .runtime.errors import AdapterError
from .runtime.files import write_atomic
from .runtime.layers.protocol import AdapterLayer
from .tensorfile import digest_tensors, read_json_record, read_tensors, spec_of, write_tensors

FORMAT = "lowrank-compiler-adapters"
VERSION = 1
CONFIG = "adapter_config.json"
TENSORS = "adapters.safetensors"
SETTINGS = ("kind", "in_features", "out_features", "rank", "alpha", "bits", "group_size")


def adapter_layers(model: nn.Module) -> list[tuple[str, AdapterLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AdapterLayer)]


def adapter_tensors(name: str, layer: AdapterLayer) -> dict[str, nn.Parameter]:
    """``{"<layer>.lora_A": p, ...}``: the layer's own trainable tensors."""
    own = {id(p) for p in layer.adapter_parameters()}
    return {f"{name}.{k}": p for k, p in layer.named_parameters() if id(p) in own}


def layer_identity(layer: nn.Module) -> dict[str, Any]:
    """What a layer was compiled from: its base's tensors (dtype, shape) and one sha256 over
    them."""
    base = layer.base if isinstance(layer, AdapterLayer) else layer
    tensors = base.state_dict()
    return {
        "tensors": {k: spec_of(t) for k, t in tensors.items()},
        "sha256": digest_tensors(tensors),
    }


def base_identity(layers: list[tuple[str, nn.Module]]) -> dict[str, dict[str, Any]]:
    return {name: layer_identity(m) for name, m in layers}


def identity_mismatch(saved: dict[str, dict], here: dict[str, dict]) -> str | None:
    """The first difference between two ``base_identity`` records, in words; None when equal."""
    for name, was in saved.items():
        now = here.get(name)
        if now is None:
            return (
                f"layer {name!r} of the saved record is not a rewritten layer of this model "
                f"(it has {len(here)}: {_names(here)})"
            )
        for key, spec in was["tensors"].items():
            other = now["tensors"].get(key)
            if other is None:
                return f"layer {name!r}: the saved base has tensor {key!r}, this model's has not"
            if other != spec:
                return f"layer {name!r}: base tensor {key!r} was {spec} saved, {other} here"
        extra = sorted(set(now["tensors"]) - set(was["tensors"]))
        if extra:
            return (
                f"layer {name!r}: this model's base has tensor {extra[0]!r}, the saved one had not"
            )
        if was["sha256"] != now["sha256"]:
            return (
                f"layer {name!r}: same shapes, different base weights (sha256 {was['sha256'][:12]} "
                "saved, "
                f"{now['sha256'][:12]} here)"
            )
    extra = [n for n in here if n not in saved]
    if extra:
        return (
            f"this model's layer {extra[0]!r} is not in the saved record ({len(extra)} more "
            "layer(s) than saved)"
        )
    return None


def _names(layers: dict) -> str:
    names = list(layers)
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def _settings(layer: AdapterLayer) -> dict[str, Any]:
    d = layer.describe()
    return {k: d.get(k) for k in SETTINGS}


def save_adapters(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model``'s adapters and the identity of its base to ``directory``; returns it."""
    layers = adapter_layers(model)
    info = compile_info(model)
    if info is None or not layers:
        raise AdapterError(
            "the model holds no adapter layers to save: compile it with method 'lora', 'qalora' "
            "or 'qlora' (a folded or 'rtn' model has none)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, records = {}, {}
    identity = base_identity(layers)
    for name, layer in layers:
        own = adapter_tensors(name, layer)
        tensors.update(own)
        records[name] = {
            **_settings(layer),
            "adapter": {k: spec_of(p) for k, p in own.items()},
            "base": identity[name],
        }
    digest = write_tensors(directory / TENSORS, tensors, metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "version": VERSION,
        "policy": info.policy.to_dict() if info.policy is not None else None,
        **({} if info.policy is not None else {"pipeline": info.pipeline}),
        "tensors": {"file": TENSORS, "sha256": digest},
        "layers": records,
    }
    write_atomic(
        directory / CONFIG, json.dumps(config, indent=1) + "\n"
    )  # last: it vouches for the file
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    config, path = read_json_record(
        directory,
        CONFIG,
        fmt=FORMAT,
        version=VERSION,
        error=AdapterError,
        what="adapter",
        writer="save_adapters",
        kind="lowrank-compiler adapter config",
    )
    layers, tensors = config.get("layers"), config.get("tensors")
    if not (
        isinstance(layers, dict)
        and isinstance(tensors, dict)
        and isinstance(tensors.get("sha256"), str)
        and all(isinstance(r, dict) and {"base", "adapter"} <= set(r) for r in layers.values())
    ):
        raise AdapterError(
            f"{str(path)!r} is damaged: it lacks the layer records or the tensor file's sha256"
        )
    return config


def load_adapters(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Copy the adapters saved in ``directory`` into ``model`` (a fresh compile of the same base
    with the same policy); returns the model. Nothing changes unless every check passes."""
    directory = Path(directory)
    config = read_config(directory)
    layers = dict(adapter_layers(model))
    if not layers:
        raise AdapterError(
            "the model holds no adapter layers: compile the base model with the saved policy "
            f"({(config.get('policy') or {}).get('method', config.get('pipeline'))!r}) first, then "
            "load the adapters into it"
        )
    saved = config["layers"]
    for (
        name,
        record,
    ) in saved.items():  # settings first: a different rank or alpha is a different adapter
        layer = layers.get(name)
        if layer is None:
            continue  # reported below, in words
        here = _settings(layer)
        for key in SETTINGS:
            if record.get(key) != here[key]:
                raise AdapterError(
                    f"adapters in {str(directory)!r} do not fit this model: layer {name!r} has "
                    f"{key} {record.get(key)!r} saved, {here[key]!r} here"
                )
    problem = identity_mismatch(
        {n: r["base"] for n, r in saved.items()}, base_identity(list(layers.items()))
    )
    if problem:
        raise AdapterError(
            f"adapters in {str(directory)!r} were saved from a different base model: {problem}"
        )
    targets = {
        k: p for name, layer in layers.items() for k, p in adapter_tensors(name, layer).items()
    }
    expected = {k: spec_of(p) for k, p in targets.items()}
    recorded = {k: s for r in saved.values() for k, s in r["adapter"].items()}
    if recorded != expected:
        key = next(k for k in list(expected) + list(recorded) if expected.get(k) != recorded.get(k))
        raise AdapterError(
            f"adapters in {str(directory)!r}: tensor {key!r} is {recorded.get(key)} saved, "
            f"{expected.get(key)} in this model"
        )
    tensors = read_tensors(
        directory / TENSORS,
        sha256=config["tensors"]["sha256"],
        expected=expected,
        what="adapter file",
    )
    with torch.no_grad():
        for key, p in targets.items():
            p.copy_(tensors[key])
    return model


__all__ = ["base_identity", "identity_mismatch", "layer_identity", "load_adapters", "save_adapters"]
