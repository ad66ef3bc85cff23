"""Module-name patterns, as the policy writes them.

A pattern matches a fully-qualified module name (``model.layers.0.self_attn.q_proj``):

- ``re:<regex>``: the regex matches the whole name;
- a glob (``*``, ``?``, ``[``): the whole name, or a dotted suffix of it, matches
  (``layers.*.mlp.*`` matches ``model.layers.0.mlp.up_proj``);
- anything else: the exact name, or a dotted suffix (``q_proj``, ``attn.q_proj``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping

from ...runtime.errors import LowRankError, PolicyError
from ...runtime.quant.formats import check_bits, check_group_size, check_int, check_positive

ALL_LINEAR = "all-linear"

_GLOB_CHARS = set("*?[")


class TargetError(LowRankError, ValueError):
    """Target/exclude/override patterns match nothing, or match layers that cannot be rewritten."""


def check_pattern(pattern: str) -> None:
    """Raise ``ValueError`` for a pattern that can never work."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"a module-name pattern must be a non-empty string, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as e:
            raise ValueError(
                f"pattern {pattern!r} is not a valid regular expression: {e}"
            ) from None


def matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if _GLOB_CHARS & set(pattern):
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)
    return name == pattern or name.endswith("." + pattern)


OVERRIDE_FIELDS = ("rank", "alpha", "bits", "group_size")


def resolve_layer_options(name: str, base: dict, overrides: dict | None) -> dict:
    """The options for layer ``name``: ``base`` updated by every override pattern that matches."""
    opts = dict(base)
    for pattern, fields in (overrides or {}).items():
        if matches(pattern, name):
            opts.update({k: v for k, v in fields.items() if k in opts})
    return opts


def check_override(pattern, fields) -> dict:
    """One ``overrides`` entry, checked (a valid pattern, known fields, valid values) and
    normalised (alpha a float): the Policy's ``Override`` and the passes' ``overrides`` option
    both go through here."""
    try:
        check_pattern(pattern)
    except ValueError as e:
        raise PolicyError(f"overrides: {e}") from None
    where = f"overrides[{pattern!r}]"
    if not isinstance(fields, Mapping):
        raise PolicyError(f"{where} must be a mapping of {OVERRIDE_FIELDS}, got {fields!r}")
    unknown = sorted(set(fields) - set(OVERRIDE_FIELDS))
    if unknown:
        raise PolicyError(f"{where} has unknown field(s) {unknown}; allowed: {OVERRIDE_FIELDS}")
    checks = {
        "rank": lambda v, f: check_int(v, f, 1),
        "alpha": check_positive,
        "bits": check_bits,
        "group_size": check_group_size,
    }
    return {k: checks[k](v, f"{where}.{k}") for k, v in fields.items() if v is not None}


def check_overrides(overrides: dict | None, selected: list[str]) -> None:
    """A pass's ``overrides`` option: each entry valid (``check_override``) and matching a layer."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise PolicyError(
            f"overrides must be a mapping {{pattern: {{field: value}}}}, got {overrides!r}"
        )
    for pattern, fields in (overrides or {}).items():
        check_override(pattern, fields)
        if not any(matches(pattern, n) for n in selected):
            raise TargetError(
                f"override pattern {pattern!r} matches no targeted layer. Targeted: "
                f"{', '.join(selected)}"
            )
