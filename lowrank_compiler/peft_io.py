"""PEFT's LoRA adapter format: load one onto a compiled model, write ours in it.

The directory's layout, its ``adapter_config.json`` (checked) and PEFT's scale
``s = lora_alpha / r`` (rsLoRA, ``rank_pattern`` / ``alpha_pattern``) are read in
``peft_format``, with ``peft_policy``; this module moves the tensors between the directory
and the model's adapter layers, and writes the config of ours.

QA-LoRA (``use_qalora``, ``qalora_group_size = g``): both pool the input over each group
of ``g`` columns, ``A: [r, K/g]``. Ours takes the group mean (``AvgPool1d(g)``, as the
official code); PEFT multiplies the mean by ``L = K/g``, the number of groups. So the same
adapter is ``A_peft = A_ours / L``: written divided by ``L``, read multiplied by ``L``
(exact when ``L`` is a power of two).

A layer the compiled model cannot match (another kind, group size, rank, shape or scale
than the compiled layer's) is refused with an error naming the layer, before any weight is
copied.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from .peft_format import (
    CONFIG,
    PREFIX,
    WEIGHTS,
    adapter_pairs,
    peft_policy,
    rank_alpha,
    read_peft_config,
)
from .runtime.errors import AdapterError
from .runtime.files import write_atomic
from .runtime.layers.linear_kinds import linear_shape
from .runtime.layers.protocol import AdapterLayer

# --- loading onto a compiled model --------------------------------------------------


def _adapter_layers(model: nn.Module, writing: bool) -> dict[str, AdapterLayer]:
    """The model's adapter layers, each with a PEFT form (``peft_problem``) or one error naming the
    first that has none (``writing``: saving them; else loading into them)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}
    problems = [(n, p) for n, m in layers.items() if (p := m.peft_problem(writing))]
    if problems:
        name, problem = problems[0]
        raise AdapterError(f"layer {name!r} ({len(problems)} in all) {problem}")
    if not layers:
        raise AdapterError(
            "the model holds no LoRA or QA-LoRA layers: compile it first "
            "(lrc.compile(model, lrc.peft_policy(adapter_dir), ...)); a folded model has none"
        )
    return layers


def _check_layer_sets(ours: dict, theirs: dict, path: Path) -> None:
    hint = f"compile the model with lrc.peft_policy({str(path)!r})"
    extra = sorted(set(theirs) - set(ours))
    if extra:
        raise AdapterError(
            f"the adapter adapts {len(extra)} layer(s) that are not adapter layers of this model "
            f"({', '.join(extra[:4])}{', ...' if len(extra) > 4 else ''}); {hint}"
        )
    missing = sorted(set(ours) - set(theirs))
    if missing:
        raise AdapterError(
            f"the model has adapters on {len(missing)} layer(s) the PEFT adapter does not hold "
            f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); {hint}"
        )


def _check_layer(name: str, layer: nn.Module, pair: dict, cfg: dict, path: Path) -> None:
    qalora = bool(cfg.get("use_qalora"))
    if qalora != (layer.peft_kind == "qalora"):
        theirs, ours = ("QA-LoRA", "LoRA") if qalora else ("LoRA", "QA-LoRA")
        raise AdapterError(
            f"layer {name}: the adapter is {theirs} (use_qalora={qalora}) but the compiled layer "
            f"is {ours}; compile with lrc.peft_policy({str(path)!r})"
        )
    if qalora and layer.group_size != cfg.get("qalora_group_size", 16):
        raise AdapterError(
            f"layer {name}: qalora_group_size={cfg.get('qalora_group_size')} but the layer "
            f"pools groups of {layer.group_size}"
        )
    for ab, ours in (("A", layer.lora_A), ("B", layer.lora_B)):
        if tuple(pair[ab].shape) != tuple(ours.shape):
            raise AdapterError(
                f"layer {name}: {PREFIX}{name}.lora_{ab}.weight has shape {list(pair[ab].shape)}, "
                f"the compiled layer's lora_{ab} is {list(ours.shape)} (rank {layer.rank}, "
                f"in {layer.in_features}, out {layer.out_features}); compile with "
                f"lrc.peft_policy({str(path)!r})"
            )
    r, alpha = rank_alpha(cfg, name)
    if not math.isclose(alpha / r, layer.scale, rel_tol=1e-6):
        raise AdapterError(
            f"layer {name}: the adapter's scale is {alpha / r:g} (r={r}, our alpha={alpha:g}), the "
            f"compiled layer's is {layer.scale:g} (alpha={layer.alpha:g}, rank={layer.rank}); "
            f"compile with lrc.peft_policy({str(path)!r})"
        )


def load_peft_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Copy a PEFT LoRA adapter's weights into ``model``'s adapter layers; return ``model``.

    ``model`` is compiled by ``compile`` with the adapter's layers, ranks and scales
    (``peft_policy(path)`` gives that policy). Every layer is checked before any weight is
    copied, so a refused adapter leaves the model as it was.
    """
    path = Path(path)
    cfg = read_peft_config(path)
    pairs = adapter_pairs(path)
    layers = _adapter_layers(model, writing=False)
    _check_layer_sets(layers, pairs, path)
    for name, layer in layers.items():
        _check_layer(name, layer, pairs[name], cfg, path)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.copy_(pairs[name]["A"].to(layer.lora_A.dtype) * layer.peft_scale())
            layer.lora_B.copy_(pairs[name]["B"])
    return model


# --- writing --------------------------------------------------------------------------


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _check_saveable(layers: dict[str, nn.Module]) -> None:
    kinds = {m.peft_kind for m in layers.values()}
    if len(kinds) > 1:
        raise AdapterError("the model mixes LoRA and QA-LoRA layers; a PEFT adapter holds one kind")
    groups = sorted({m.group_size for m in layers.values() if m.peft_kind == "qalora"})
    if len(groups) > 1:
        raise AdapterError(
            f"QA-LoRA layers pool groups of {groups}; PEFT's qalora_group_size is one number"
        )
    dropouts = sorted(
        {m.dropout.p if isinstance(m.dropout, nn.Dropout) else 0.0 for m in layers.values()}
    )
    if len(dropouts) > 1:
        raise AdapterError(f"layers use dropouts {dropouts}; PEFT's lora_dropout is one number")


def peft_config(model: nn.Module) -> dict[str, Any]:
    """The ``adapter_config.json`` PEFT needs for ``model``'s adapters (the layers named
    exactly)."""
    layers = _adapter_layers(model, writing=True)
    _check_saveable(layers)
    pairs = {n: (m.rank, m.alpha) for n, m in layers.items()}
    rank, alpha = Counter(pairs.values()).most_common(1)[0][0]
    first = next(iter(layers.values()))
    qalora = first.peft_kind == "qalora"
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if type(model).__name__.endswith("ForCausalLM") else None,
        "base_model_name_or_path": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": _number(alpha),
        "lora_dropout": first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0,
        "target_modules": sorted(layers),
        "fan_in_fan_out": any(linear_shape(m.base).kind == "conv1d" for m in layers.values()),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "rank_pattern": {re.escape(n): r for n, (r, _) in pairs.items() if r != rank},
        "alpha_pattern": {re.escape(n): _number(a) for n, (_, a) in pairs.items() if a != alpha},
        "use_qalora": qalora,
        "qalora_group_size": first.group_size if qalora else 16,
    }


def save_peft_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s LoRA (or QA-LoRA) adapters as a PEFT adapter directory; return it.

    ``peft.PeftModel.from_pretrained(base_model, path)`` loads a LoRA one onto the original
    model. QA-LoRA adapters are written with ``use_qalora`` and ``A / L`` (PEFT's pooling
    scale); PEFT runs those on GPTQ-quantized models only.
    """
    path = Path(path)
    config = peft_config(model)  # checks first: nothing is written for a model we cannot express
    tensors = {}
    for name, layer in _adapter_layers(model, writing=True).items():
        a = layer.lora_A.detach() / layer.peft_scale()  # PEFT's QA-LoRA A is ours / L
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().clone().contiguous()
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(path / WEIGHTS, save(tensors, metadata={"format": "pt"}))
    write_atomic(path / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


__all__ = [
    "load_peft_adapter",
    "peft_config",
    "peft_policy",
    "read_peft_config",
    "save_peft_adapter",
]
