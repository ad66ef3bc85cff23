"""``Policy``: what to rewrite and how, as one frozen, validated, serialisable value.

Layer selection is a list of name patterns (``runtime.select``: exact name, dotted
suffix, glob, ``re:<regex>``) or ``"all-linear"`` (every linear layer but the output
head), minus ``exclude``. ``overrides`` maps a pattern to per-layer ``rank``, ``alpha``,
``bits``, ``group_size``; when several patterns match a layer, later ones win.

``Policy.from_dict(p.to_dict()) == p`` for every valid policy; JSON and TOML files hold
the same dictionary.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .runtime.errors import PolicyError
from .runtime.select import ALL_LINEAR, OVERRIDE_FIELDS, check_pattern
from .pipeline import PassSpec, Pipeline

METHODS = ("lora",)
BITS = (2, 3, 4, 8)


def _patterns(name: str, value) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise PolicyError(f"{name} must be a pattern string or a list of them, got {value!r}")
    out = tuple(value)
    for p in out:
        if p == ALL_LINEAR and name == "target":
            continue
        try:
            check_pattern(p)
        except ValueError as e:
            raise PolicyError(f"{name}: {e}") from None
    return out


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise PolicyError(f"{name} must be an integer {span}, got {value!r}")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise PolicyError(f"{name} must be a positive finite number, got {value!r}")


def _check_bits(name: str, value) -> None:
    if value not in BITS or isinstance(value, bool):
        raise PolicyError(f"{name} must be one of {BITS}, got {value!r}")


def _check_group(name: str, value) -> None:
    _check_int(name, value, 16)
    if value & (value - 1):
        raise PolicyError(f"{name} must be a power of two >= 16 (16, 32, 64, 128, ...), got {value!r}")


@dataclass(frozen=True)
class Override:
    """Per-layer settings for the layers ``pattern`` matches (``None`` keeps the policy's)."""

    pattern: str
    rank: int | None = None
    alpha: float | None = None
    bits: int | None = None
    group_size: int | None = None

    def __post_init__(self):
        try:
            check_pattern(self.pattern)
        except ValueError as e:
            raise PolicyError(f"overrides: {e}") from None
        where = f"overrides[{self.pattern!r}]"
        if self.rank is not None:
            _check_int(f"{where}.rank", self.rank, 1)
        if self.alpha is not None:
            _check_positive(f"{where}.alpha", self.alpha)
            object.__setattr__(self, "alpha", float(self.alpha))
        if self.bits is not None:
            _check_bits(f"{where}.bits", self.bits)
        if self.group_size is not None:
            _check_group(f"{where}.group_size", self.group_size)

    def fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in OVERRIDE_FIELDS if getattr(self, k) is not None}


@dataclass(frozen=True)
class Policy:
    """How ``compile`` rewrites a model.

    method: ``"lora"`` (float base, LoRA adapters).
    target / exclude: module-name patterns, or ``"all-linear"``.
    rank, alpha, dropout: adapter rank ``r``, scale ``alpha / r``, dropout on the adapter input.
    bits, group_size: quantization of the frozen base for the quantizing methods.
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
    overrides: tuple[Override, ...] = ()

    def __post_init__(self):
        if self.method not in METHODS:
            raise PolicyError(f"method must be one of {METHODS}, got {self.method!r}")
        object.__setattr__(self, "target", _patterns("target", self.target))
        object.__setattr__(self, "exclude", _patterns("exclude", self.exclude))
        if not self.target:
            raise PolicyError("target must name at least one pattern (or 'all-linear')")
        _check_int("rank", self.rank, 1)
        _check_positive("alpha", self.alpha)
        object.__setattr__(self, "alpha", float(self.alpha))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise PolicyError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        _check_bits("bits", self.bits)
        _check_group("group_size", self.group_size)
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
            raise PolicyError(f"policy file {str(path)!r} is not valid {path.suffix[1:].upper()}: {e}") from None
        return cls.from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # --- lowering to passes --------------------------------------------------------
    def pipeline(self) -> Pipeline:
        """The pass pipeline that carries out this policy."""
        select = {"target": list(self.target)}
        if self.exclude:
            select["exclude"] = list(self.exclude)
        rewrite = {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout}
        if self.overrides:
            rewrite["overrides"] = {o.pattern: o.fields() for o in self.overrides}
        return Pipeline((PassSpec("find-linears", select), PassSpec("insert-lora", rewrite)))


def _overrides(value) -> tuple[Override, ...]:
    if isinstance(value, Mapping):
        out = []
        for pattern, spec in value.items():
            if not isinstance(spec, Mapping):
                raise PolicyError(f"overrides[{pattern!r}] must be a mapping of {OVERRIDE_FIELDS}, got {spec!r}")
            unknown = sorted(set(spec) - set(OVERRIDE_FIELDS))
            if unknown:
                raise PolicyError(f"overrides[{pattern!r}] has unknown field(s) {unknown}; allowed: {OVERRIDE_FIELDS}")
            out.append(Override(pattern, **spec))
        return tuple(out)
    if isinstance(value, (list, tuple)) and all(isinstance(o, Override) for o in value):
        return tuple(value)
    raise PolicyError(f"overrides must be a mapping {{pattern: {{field: value}}}}, got {value!r}")
