"""``Policy``: what to rewrite and how, as one frozen, validated, serialisable value.

Layer selection is a list of name patterns (``passes.helpers.select``: exact name, dotted
suffix, glob, ``re:<regex>``) or ``"all-linear"`` (every linear layer but the output
head), minus ``exclude``. ``overrides`` maps a pattern to per-layer ``rank``, ``alpha``,
``bits``, ``group_size``; when several patterns match a layer, later ones win.

``Policy.from_dict(p.to_dict()) == p`` for every valid policy; JSON and TOML files hold
the same dictionary.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .passes.helpers.select import ALL_LINEAR, OVERRIDE_FIELDS, check_override, check_pattern
from .pipeline_text import PassSpec, Pipeline
from .runtime.errors import PolicyError
from .runtime.quant.formats import (
    QUANTIZERS,
    ZERO_POINT_MODES,
    adapter_dtype,
    check_bits,
    check_choice,
    check_dropout,
    check_flag,
    check_group_size,
    check_int,
    check_positive,
)

METHODS = ("lora", "qalora", "lrqat", "qlora", "rtn")
QUANTIZED = ("qalora", "lrqat", "rtn")  # the methods with an integer base: ``quantizer`` applies
SCALED = ("qalora", "lrqat")  # the methods that can train the base's scales


def _patterns(name: str, value) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise PolicyError(f"{name} must be a pattern string or a list of them, got {value!r}")
    out = tuple(value)
    for p in out:
        if p == ALL_LINEAR:
            if name != "target":
                raise PolicyError(f"{name} cannot be {ALL_LINEAR!r}: name the layers to leave out")
            continue
        try:
            check_pattern(p)
        except ValueError as e:
            raise PolicyError(f"{name}: {e}") from None
    return out


@dataclass(frozen=True)
class Override:
    """Per-layer settings for the layers ``pattern`` matches (``None`` keeps the policy's)."""

    pattern: str
    rank: int | None = None
    alpha: float | None = None
    bits: int | None = None
    group_size: int | None = None

    def __post_init__(self):
        given = {k: getattr(self, k) for k in OVERRIDE_FIELDS}
        for key, value in check_override(self.pattern, given).items():
            object.__setattr__(self, key, value)

    def fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in OVERRIDE_FIELDS if getattr(self, k) is not None}


@dataclass(frozen=True)
class Policy:
    """How ``compile`` rewrites a model.

    method: ``"lora"`` (float base, LoRA adapters), ``"qalora"`` (INT-``bits`` base in
        groups of ``group_size``, group-pooled adapters that fold exactly), ``"lrqat"`` (the
        same integer format; full-width adapters inside the rounding of each weight's grid
        position, folded into new integer codes), ``"qlora"``
        (NF4 base, LoRA adapters: the baseline), ``"rtn"`` (quantize only, no adapter).
    target / exclude: module-name patterns, or ``"all-linear"``.
    rank, alpha, dropout: adapter rank ``r``, scale ``alpha / r``, dropout on the adapter input
        (QA-LoRA: after pooling; lrqat has no adapter input and takes none).
    bits, group_size: the integer format (qalora, lrqat, rtn; qlora's merge requantizes to it).
    zero_point: QA-LoRA training form, ``"float"`` (official) or ``"int"`` (integer zero
        points in the loop, straight-through).
    quantizer: how qalora, lrqat and rtn round the base: ``"rtn"`` (min-max, round to nearest)
        or ``"gptq"`` (error feedback along calibration statistics; ``compile`` then needs
        ``calibration=`` batches and runs the ``calibrate`` pass first).
    double_quant: QLoRA's 8-bit quantization of the NF4 block scales.
    train_scales: qalora and lrqat also train each group's scale, as a log factor on the
        quantizer's (float in MatMulNBits: still an exact fold).
    adapter_dtype: what the adapters train in, ``"float32"`` (default, as PEFT), ``"bfloat16"``
        or ``"float16"``, whatever the model's dtype: a bfloat16 model keeps bfloat16
        activations in and out, its adapters float32.
    overrides: per-pattern rank/alpha/bits/group_size.
    """

    method: str = "lora"
    target: tuple[str, ...] = (ALL_LINEAR,)
    exclude: tuple[str, ...] = ()
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    bits: int = 4
    group_size: int = 32
    zero_point: str = "float"
    quantizer: str = "rtn"
    double_quant: bool = False
    train_scales: bool = False
    adapter_dtype: str = "float32"
    overrides: tuple[Override, ...] = ()

    def __post_init__(self):
        if self.method not in METHODS:
            raise PolicyError(f"method must be one of {METHODS}, got {self.method!r}")
        object.__setattr__(self, "target", _patterns("target", self.target))
        object.__setattr__(self, "exclude", _patterns("exclude", self.exclude))
        if not self.target:
            raise PolicyError("target must name at least one pattern (or 'all-linear')")
        check_int(self.rank, "rank", 1)
        object.__setattr__(self, "alpha", check_positive(self.alpha, "alpha"))
        object.__setattr__(self, "dropout", check_dropout(self.dropout))
        check_bits(self.bits)
        check_group_size(self.group_size)
        check_choice(self.zero_point, ZERO_POINT_MODES, "zero_point")
        check_choice(self.quantizer, QUANTIZERS, "quantizer")
        if self.quantizer != "rtn" and self.method not in QUANTIZED:
            raise PolicyError(
                f"quantizer={self.quantizer!r} applies to methods {_names(QUANTIZED)} (integer "
                f"bases); method {self.method!r} has none: leave quantizer='rtn'"
            )
        check_flag(self.double_quant, "double_quant")
        check_flag(self.train_scales, "train_scales")
        if self.train_scales and self.method not in SCALED:
            raise PolicyError(
                f"train_scales=True applies to method {_names(SCALED)} (integer grid scales); "
                f"method {self.method!r} has no scales to train: leave train_scales=False"
            )
        if self.method == "lrqat" and self.dropout:
            raise PolicyError(
                f"dropout={self.dropout!r}: method 'lrqat' puts its adapter inside the weight, "
                f"where there is no input to drop; use dropout=0"
            )
        adapter_dtype(self.adapter_dtype)
        if self.adapter_dtype != "float32" and self.method == "rtn":
            raise PolicyError(
                f"adapter_dtype={self.adapter_dtype!r}: method 'rtn' has no adapter; leave "
                "adapter_dtype='float32'"
            )
        object.__setattr__(self, "overrides", _overrides(self.overrides))

    # --- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "overrides":
                value = {o.pattern: o.fields() for o in value}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Policy":
        if not isinstance(data, Mapping):
            raise PolicyError(f"a policy is a mapping of fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"unknown policy field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def from_file(cls, path: str | Path) -> "Policy":
        """Read a policy from a ``.json`` or ``.toml`` file."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise PolicyError(f"cannot read policy file {str(path)!r}: {e.strerror}") from None
        try:
            if path.suffix.lower() == ".toml":
                data = tomllib.loads(raw.decode("utf-8"))
            elif path.suffix.lower() == ".json":
                data = json.loads(raw)
            else:
                raise PolicyError(f"policy file {str(path)!r} must end in .json or .toml")
        except (ValueError, UnicodeDecodeError) as e:
            if isinstance(e, PolicyError):
                raise
            raise PolicyError(
                f"policy file {str(path)!r} is not valid {path.suffix[1:].upper()}: {e}"
            ) from None
        return cls.from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # --- lowering to passes --------------------------------------------------------
    def pipeline(self, calibration: Mapping[str, Any] | None = None) -> Pipeline:
        """The pass pipeline that carries out this policy. ``calibration``: what GPTQ's data
        was (``{"batches": n, "sha256": ...}``), recorded in the ``calibrate`` pass's options."""
        select = {"target": list(self.target)}
        if self.exclude:
            select["exclude"] = list(self.exclude)
        adapter = {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout}
        dtype = {} if self.adapter_dtype == "float32" else {"adapter_dtype": self.adapter_dtype}
        quant = {"bits": self.bits, "group_size": self.group_size}
        if self.quantizer != "rtn":
            quant["quantizer"] = self.quantizer
        name, options = {
            "lora": ("insert-lora", {**adapter, **dtype}),
            "qalora": (
                "insert-qalora",
                {
                    **adapter,
                    "zero_point": self.zero_point,
                    **quant,
                    **({"train_scales": True} if self.train_scales else {}),
                    **dtype,
                },
            ),
            "lrqat": (
                "insert-lrqat",
                {
                    "rank": self.rank,
                    "alpha": self.alpha,
                    **quant,
                    **({"train_scales": True} if self.train_scales else {}),
                    **dtype,
                },
            ),
            "qlora": ("insert-qlora", {**adapter, "double_quant": self.double_quant, **dtype}),
            "rtn": ("quantize", quant),
        }[self.method]
        if self.overrides:
            options["overrides"] = {o.pattern: o.fields() for o in self.overrides}
        calibrate = (
            (PassSpec("calibrate", dict(calibration or {})),) if self.quantizer == "gptq" else ()
        )
        return Pipeline((PassSpec("find-linears", select), *calibrate, PassSpec(name, options)))

    def fold_pipeline(self, zeros: str = "split") -> Pipeline:
        """The pass that folds this policy's adapters (QLoRA requantizes to bits/group_size)."""
        return Pipeline(
            (PassSpec("fold", {"zeros": zeros, "bits": self.bits, "group_size": self.group_size}),)
        )


def _names(methods: tuple[str, ...]) -> str:
    quoted = [repr(m) for m in methods]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _overrides(value) -> tuple[Override, ...]:
    if isinstance(value, Mapping):
        out = []
        for pattern, spec in value.items():
            out.append(Override(pattern, **check_override(pattern, spec)))
        return tuple(out)
    if isinstance(value, (list, tuple)) and all(isinstance(o, Override) for o in value):
        patterns = [o.pattern for o in value]
        twice = sorted({p for p in patterns if patterns.count(p) > 1})
        if twice:
            raise PolicyError(
                f"overrides name pattern(s) {twice} more than once; merge their fields into one "
                "entry"
            )
        return tuple(value)
    raise PolicyError(f"overrides must be a mapping {{pattern: {{field: value}}}}, got {value!r}")
