"""The pass registry and the result every pass returns.

A pass is a plain function ``fn(gm, **options) -> PassResult``, registered under a
kebab-case name with a one-line summary. Its keyword-only parameters are its options;
their defaults are the defaults a pipeline string falls back to. The built-in passes
(``BUILTIN``, modules of this package) are imported on the first lookup.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.fx as fx

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass
class PassResult:
    gm: fx.GraphModule
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)  # extra lines for the dump header


@dataclass(frozen=True)
class PassInfo:
    name: str
    summary: str
    fn: Callable[..., PassResult]

    @property
    def options(self) -> dict[str, Any]:
        """Option name -> default, from the function's keyword-only parameters."""
        sig = inspect.signature(self.fn)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }


_REGISTRY: dict[str, PassInfo] = {}
BUILTIN = (
    "find_linears",
    "calibrate",
    "insert_lora",
    "insert_qalora",
    "insert_lrqat",
    "insert_qlora",
    "quantize",
    "fold",
    "export_onnx",
)


def _load_builtin() -> None:
    for (
        module
    ) in BUILTIN:  # each import registers its pass; a module already imported costs a dict lookup
        importlib.import_module(f"{__package__}.{module}")


def register_pass(name: str, summary: str):
    """Decorator: register ``fn`` as the pass ``name``."""
    if not _NAME.match(name):
        raise ValueError(f"pass name {name!r} must be kebab-case, like 'insert-lora'")

    def deco(fn):
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(
                f"a pass named {name!r} is already registered ({_REGISTRY[name].fn.__module__})"
            )
        _REGISTRY[name] = PassInfo(name, summary, fn)
        fn.pass_name = name
        return fn

    return deco


def unregister_pass(name: str) -> None:
    """Remove the pass ``name`` (a plugin's or a test's); unknown names are an error."""
    if _REGISTRY.pop(name, None) is None:
        raise KeyError(f"no pass named {name!r} is registered")


def get_pass(name: str) -> PassInfo:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown pass {name!r}; registered passes: {known}") from None


def registered_passes() -> dict[str, PassInfo]:
    _load_builtin()
    return dict(_REGISTRY)
