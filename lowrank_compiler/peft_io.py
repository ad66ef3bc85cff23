"""PEFT's LoRA adapter format: read it onto a compiled model, write ours in it.

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

QA-LoRA (``use_qalora``, ``qalora_group_size = g``): both pool the input over each group
of ``g`` columns, ``A: [r, K/g]``. Ours takes the group mean (``AvgPool1d(g)``, as the
official code); PEFT multiplies the mean by ``L = K/g``, the number of groups. So the same
adapter is ``A_peft = A_ours / L``: written divided by ``L``, read multiplied by ``L``
(exact when ``L`` is a power of two).

Anything the compiled model cannot compute the same way (DoRA, trained biases,
``modules_to_save``, layer selection by index, base weights rewritten at initialisation,
a rank or shape that differs from the compiled layer's) is refused with an error naming
the field, key or layer. Only safetensors are read; nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from .passes.helpers.select import ALL_LINEAR
from .policy import Policy
from .runtime.errors import AdapterError
from .runtime.files import write_atomic
from .runtime.layers.linear_kinds import linear_shape
from .runtime.layers.lora import LoRALinear
from .runtime.layers.lrqat import LRQATLinear
from .runtime.layers.qalora import QALoRALinear

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
    _check_positive(f"{file}: r", cfg.get("r"), integer=True)
    _check_positive(f"{file}: lora_alpha", cfg.get("lora_alpha"))
    for field in ("rank_pattern", "alpha_pattern"):
        patterns = cfg.get(field) or {}
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


def _rank_alpha(cfg: dict, name: str) -> tuple[int, float]:
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
    names = sorted(_split_keys(_read_tensors(path), path / WEIGHTS))
    rank = int(cfg["r"])
    alpha = _our_alpha(cfg["lora_alpha"], rank, bool(cfg.get("use_rslora")))
    overrides = {}
    for name in names:
        r, a = _rank_alpha(cfg, name)
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


# --- loading onto a compiled model --------------------------------------------------


def _adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    inside = [n for n, m in model.named_modules() if isinstance(m, LRQATLinear)]
    if inside:
        raise AdapterError(
            f"layer {inside[0]!r} ({len(inside)} in all) is an LR-QAT layer: its adapter moves "
            "integer "
            f"codes inside the rounding, which no PEFT adapter computes; keep it with "
            f"lrc.save_adapters, or fold it and export the integer model"
        )
    scaled = [n for n, m in model.named_modules() if isinstance(m, QALoRALinear) and m.train_scales]
    if scaled:
        raise AdapterError(
            f"layer {scaled[0]!r} ({len(scaled)} in all) trains its quantization scales "
            f"(train_scales=True), which a PEFT adapter does not hold; keep it with "
            f"lrc.save_adapters, or fold it and export the integer model"
        )
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (LoRALinear, QALoRALinear))}
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
    if qalora != isinstance(layer, QALoRALinear):
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
    r, alpha = _rank_alpha(cfg, name)
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
    pairs = _split_keys(_read_tensors(path), path / WEIGHTS)
    layers = _adapter_layers(model)
    _check_layer_sets(layers, pairs, path)
    for name, layer in layers.items():
        _check_layer(name, layer, pairs[name], cfg, path)
    with torch.no_grad():
        for name, layer in layers.items():
            groups = layer.in_features // layer.group_size if isinstance(layer, QALoRALinear) else 1
            layer.lora_A.copy_(
                pairs[name]["A"].to(layer.lora_A.dtype) * groups
            )  # PEFT's QA-LoRA A is ours / L
            layer.lora_B.copy_(pairs[name]["B"])
    return model


# --- writing --------------------------------------------------------------------------


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _check_saveable(layers: dict[str, nn.Module]) -> None:
    kinds = {type(m) for m in layers.values()}
    if len(kinds) > 1:
        raise AdapterError("the model mixes LoRA and QA-LoRA layers; a PEFT adapter holds one kind")
    qalora = [(n, m) for n, m in layers.items() if isinstance(m, QALoRALinear)]
    bad = [n for n, m in qalora if m.zero_point != "float"]
    if bad:
        raise AdapterError(
            f"layer(s) {', '.join(bad[:4])} train with zero_point='int' (rounded zero points), "
            f"which PEFT's QA-LoRA cannot compute; fold them instead"
        )
    groups = sorted({m.group_size for _, m in qalora})
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
    layers = _adapter_layers(model)
    _check_saveable(layers)
    pairs = {n: (m.rank, m.alpha) for n, m in layers.items()}
    rank, alpha = Counter(pairs.values()).most_common(1)[0][0]
    first = next(iter(layers.values()))
    qalora = isinstance(first, QALoRALinear)
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
    for name, layer in _adapter_layers(model).items():
        groups = layer.in_features // layer.group_size if isinstance(layer, QALoRALinear) else 1
        tensors[f"{PREFIX}{name}.lora_A.weight"] = (layer.lora_A.detach() / groups).contiguous()
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
