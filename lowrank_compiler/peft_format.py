"""PEFT's LoRA adapter directory, read: ``adapter_config.json`` checked to be one the compiled
model computes the same way, the layers its weights adapt, and the ``Policy`` that compiles a
model to match (``peft_policy``). ``peft_io`` moves the tensors.

A PEFT adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors``
with one pair of tensors per adapted layer, named after the layer's module path inside
PEFT's wrapper::

    base_model.model.<module name>.lora_A.weight    A: [r, K]
    base_model.model.<module name>.lora_B.weight    B: [N, r]

PEFT computes ``y = W x + b + s B A dropout(x)`` with ``s = lora_alpha / r``, or
``s = lora_alpha / sqrt(r)`` under ``use_rslora``; ``rank_pattern`` / ``alpha_pattern``
give some layers their own ``r`` / ``lora_alpha`` (the first key whose regex
``(.*\\.)?(key)$`` matches the layer name). Ours is ``s = alpha / r``, so an rsLoRA
layer is ours with ``alpha = lora_alpha * sqrt(r)``; the tensors are the same.

Anything the compiled model cannot compute the same way (DoRA, trained biases,
``modules_to_save``, layer selection by index, base weights rewritten at initialisation)
is refused with an error naming the field or key. Only safetensors are read; nothing is
unpickled.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .passes.helpers.select import ALL_LINEAR
from .policy import Policy
from .runtime.errors import AdapterError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<name>.+)\.lora_(?P<ab>[AB])\.weight$")

# fields that change what the adapter computes, and the value under which we compute it the same way
_MUST_BE = {
    "use_dora": False,
    "bias": "none",
    "lora_bias": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "layer_replication": None,
    "trainable_token_indices": None,
    "alora_invocation_tokens": None,
    "target_parameters": None,
    "megatron_config": None,
    "velora_config": None,
    "monteclora_config": None,
    "use_bdlora": None,
    "arrow_config": None,
    "kasa_config": None,
}
# fields that do not change the forward of a saved adapter
_IGNORED = {
    "task_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "layers_pattern",
    "megatron_core",
    "runtime_config",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "ensure_weight_tying",
    "init_lora_weights",
}
_MAPPED = {
    "peft_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "exclude_modules",
    "fan_in_fan_out",
    "use_rslora",
    "rank_pattern",
    "alpha_pattern",
    "use_qalora",
    "qalora_group_size",
}
# initialisations that rewrite the base weights: the adapter is only right on that rewritten base
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


# --- reading ------------------------------------------------------------------------


def read_peft_config(path: str | Path) -> dict[str, Any]:
    """``adapter_config.json`` of a PEFT LoRA adapter, checked to be one we can compute."""
    file = Path(path) / CONFIG
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise AdapterError(
            f"cannot read {file}: {e.strerror}; a PEFT adapter directory holds {CONFIG} "
            f"and {WEIGHTS}"
        ) from None
    except ValueError as e:
        raise AdapterError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{file} must hold a JSON object, got {type(cfg).__name__}")
    _check_config(cfg, file)
    return cfg


def _check_config(cfg: dict, file: Path) -> None:
    _check_fields(cfg, file)
    _check_positive(f"{file}: r", cfg.get("r"), integer=True)
    _check_positive(f"{file}: lora_alpha", cfg.get("lora_alpha"))
    for field in ("rank_pattern", "alpha_pattern"):
        _check_patterns(cfg.get(field) or {}, field, file)


def _check_fields(cfg: dict, file: Path) -> None:
    """Refuse another adapter type, a field that changes the forward, a base rewritten at
    initialisation, and a field this reader does not know that is set."""
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(
            f"{file}: peft_type is {cfg.get('peft_type')!r}; only 'LORA' adapters can be read"
        )
    for key, wanted in _MUST_BE.items():
        value = cfg.get(key, wanted)
        if value != wanted and value not in (None, False, [], {}):
            raise AdapterError(
                f"{file}: {key}={value!r} is not supported (needs {wanted!r}): "
                f"{_WHY.get(key, 'the compiled model has no such adapter form')}"
            )
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise AdapterError(
            f"{file}: init_lora_weights={init!r} rewrote the base weights at initialisation, so "
            f"the adapter is only right on that rewritten base; convert it to a plain LoRA "
            "adapter with PEFT first "
            "(save_pretrained(path_initial_model_for_weight_conversion=...))"
        )
    unknown = sorted(
        k
        for k in cfg
        if k not in _MUST_BE
        and k not in _IGNORED
        and k not in _MAPPED
        and cfg[k] not in (None, False, [], {}, "")
    )
    if unknown:
        raise AdapterError(
            f"{file}: field(s) {unknown} are not known to this reader and are set; if they do not "
            f"change the adapter's forward, remove them from {CONFIG}"
        )


def _check_patterns(patterns, field: str, file: Path) -> None:
    """``rank_pattern`` / ``alpha_pattern``: layer-name regexes to positive numbers."""
    if not isinstance(patterns, dict):
        raise AdapterError(
            f"{file}: {field} must map layer-name regexes to numbers, got {patterns!r}"
        )
    for key, value in patterns.items():
        _check_positive(f"{file}: {field}[{key!r}]", value, integer=field == "rank_pattern")
        try:
            re.compile(key)
        except re.error as e:
            raise AdapterError(
                f"{file}: {field} key {key!r} is not a valid regular expression: {e}"
            ) from None


def _check_positive(where: str, value, integer: bool = False) -> None:
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        raise AdapterError(
            f"{where} must be a positive {'integer' if integer else 'number'}, got {value!r}"
        )


_WHY = {
    "use_dora": (
        "DoRA rescales each output by a learned magnitude, which a LoRA layer does not hold"
    ),
    "bias": "the adapter trains biases of the base layers",
    "lora_bias": "lora_B carries a bias",
    "modules_to_save": "whole modules are trained and saved beside the adapters",
    "layers_to_transform": "select the layers by name in target_modules instead",
}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    file = path / WEIGHTS
    if not file.is_file():
        pickled = [p.name for p in path.glob("adapter_model.bin")]
        hint = (
            f"; found {pickled[0]}, a pickle: it is not read (convert it to safetensors with PEFT)"
            if pickled
            else ""
        )
        raise AdapterError(f"no {WEIGHTS} in {path}{hint}")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise AdapterError(f"{file} is not a readable safetensors file: {e}") from None


def _split_keys(tensors: dict[str, torch.Tensor], file: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{layer name: {"A": tensor, "B": tensor}} from PEFT's key names."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterError(
                f"{file}: key {key!r} is not a LoRA weight ({PREFIX}<layer>.lora_A.weight / "
                f".lora_B.weight); {_guess(key)}"
            )
        layers.setdefault(m["name"], {})[m["ab"]] = tensor
    for name, pair in layers.items():
        if set(pair) != {"A", "B"}:
            missing = ({"A", "B"} - set(pair)).pop()
            raise AdapterError(
                f"{file}: layer {name!r} has no {PREFIX}{name}.lora_{missing}.weight"
            )
    return layers


def _guess(key: str) -> str:
    if "lora_magnitude_vector" in key:
        return "it is DoRA's magnitude, which is not supported"
    if "lora_embedding" in key:
        return "it adapts an embedding, which is not supported (only linear layers)"
    if "modules_to_save" in key:
        return "it is a fully trained module (modules_to_save), which is not supported"
    if key.endswith(".bias"):
        return "it is a trained bias, which is not supported"
    return "this reader knows LoRA's A and B weights only"


def adapter_pairs(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{layer name: {"A": tensor, "B": tensor}} of the adapter directory ``path``."""
    return _split_keys(_read_tensors(path), path / WEIGHTS)


# --- the policy an adapter needs ----------------------------------------------------


def _first_pattern(patterns: dict, name: str):
    """PEFT's rule: the first key whose regex ``(.*\\.)?(key)$`` matches the layer name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return None


def _our_alpha(lora_alpha: float, r: int, rslora: bool) -> float:
    """Our ``alpha`` for PEFT's (``s = alpha / r``; rsLoRA's ``lora_alpha / sqrt(r)`` is ``alpha =
    lora_alpha sqrt(r)``)."""
    return float(lora_alpha) * math.sqrt(r) if rslora else float(lora_alpha)


def rank_alpha(cfg: dict, name: str) -> tuple[int, float]:
    """The layer's rank and our alpha under PEFT's config."""
    r = int(_first_pattern(cfg.get("rank_pattern") or {}, name) or cfg["r"])
    lora_alpha = _first_pattern(cfg.get("alpha_pattern") or {}, name) or cfg["lora_alpha"]
    return r, _our_alpha(lora_alpha, r, bool(cfg.get("use_rslora")))


def _patterns(value, field: str) -> list[str]:
    """PEFT's target_modules/exclude_modules as our patterns (same matching)."""
    if value is None or value == []:
        return []
    if isinstance(value, str):  # PEFT: a regex the whole name must match
        return [ALL_LINEAR] if value == ALL_LINEAR else [f"re:{value}"]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        # PEFT: the exact name or a dotted suffix, as ours; escape what we would read as a glob or
        # regex
        return [
            f"re:(.*\\.)?{re.escape(v)}" if set(v) & set("*?[") or v.startswith("re:") else v
            for v in sorted(value)
        ]
    raise AdapterError(f"{field} must be a string or a list of strings, got {value!r}")


def peft_policy(path: str | Path) -> Policy:
    """The ``Policy`` that compiles a model with the layers, ranks and scales of this PEFT adapter.

    Compile with it, then ``load_peft_adapter``. ``use_qalora`` gives ``method="qalora"`` with
    ``group_size = qalora_group_size`` and the policy's default ``bits`` (PEFT keeps the bit
    width in the quantized model, not in the adapter): ``dataclasses.replace`` it if needed.
    """
    path = Path(path)
    cfg = read_peft_config(path)
    names = sorted(adapter_pairs(path))
    rank = int(cfg["r"])
    alpha = _our_alpha(cfg["lora_alpha"], rank, bool(cfg.get("use_rslora")))
    overrides = {}
    for name in names:
        r, a = rank_alpha(cfg, name)
        own = {k: v for k, v, default in (("rank", r, rank), ("alpha", a, alpha)) if v != default}
        if own:
            overrides[name] = own
    fields: dict[str, Any] = {
        "method": "qalora" if cfg.get("use_qalora") else "lora",
        "target": _patterns(cfg.get("target_modules"), "target_modules") or names,
        "exclude": _patterns(cfg.get("exclude_modules"), "exclude_modules"),
        "rank": rank,
        "alpha": alpha,
        "dropout": float(cfg.get("lora_dropout") or 0.0),
        "overrides": overrides,
    }
    if cfg.get("use_qalora"):
        fields["group_size"] = int(cfg.get("qalora_group_size", 16))
    return Policy(**fields)


__all__ = [
    "CONFIG",
    "PREFIX",
    "WEIGHTS",
    "adapter_pairs",
    "peft_policy",
    "rank_alpha",
    "read_peft_config",
]
