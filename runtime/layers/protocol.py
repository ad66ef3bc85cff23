"""The layer protocol: what every layer kind declares on its class, and the registry of kinds.

A *layer kind* is a module class that a rewrite pass puts in place of a model's linear layer
(or vocabulary table): a frozen integer base (``IntLinear``, ``GridBase``, ``NF4Linear``,
``IntEmbedding``) or an adapter layer over one (``LoRALinear``, ``QALoRALinear``,
``LRQATLinear``). The fold, the exporters, adapter files and the summary ask the layer, never
its class, so adding a kind is one file and ``@register_layer``:

every kind (``Layer``)
    ``kind``                 its name; ``describe()["kind"]`` may refine it per instance
    ``describe()``           one row of the summary (kind, shapes, bits, group, zeros, ...)
    ``frozen_tensors``       buffers nothing ever writes (integer codes): a model copy shares them
    ``export_problem(fmt)``  why it has no ONNX form in ``fmt`` (``None``: it has one)
    ``export_layer(fmt)``    the module exported in its place (``None``: itself), e.g. LR-QAT's fold
    ``lowering(fmt)``        how it appears in the exported graph, in words (the file's record)

a frozen linear base (``QuantizedLinear``) also
    ``in_features``, ``out_features``, ``bias``, ``dequantize()`` -> f32 ``[N, K]``

an adapter layer (``AdapterLayer``) also
    ``base``                 the frozen layer it adapts; its tensors identify saved adapters
    ``adapter_parameters()`` what trains
    ``io_dtype``             the activations' dtype (in and out), which may differ from the
                             adapters' (float32 adapters in a bfloat16 model, as PEFT trains)
    ``folded_layer(form)``   the plain layer that computes the same (``FoldForm``)
    ``fold_error(folded, x)``  ``max |folded(x) - self(x)| / max |self(x)|``, no dropout
    ``peft_kind``, ``peft_problem(writing)``, ``peft_scale()``   its PEFT adapter form
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from ..quant.formats import FOLD_ZEROS, check_bits, check_choice, check_group_size

_KIND = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class Layer(nn.Module):
    """Base of every layer kind (module docstring): the export hooks default to "as it is"."""

    kind: ClassVar[str] = ""
    frozen_tensors: ClassVar[tuple[str, ...]] = ()

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def export_problem(self, fmt: str) -> str | None:
        return None

    def export_layer(self, fmt: str) -> nn.Module | None:
        return None

    def lowering(self, fmt: str) -> str:
        return f"{type(self).__name__} as torch exports it"


class QuantizedLinear(Layer):
    """A frozen linear layer stored in a quantized form: ``y = x dequantize()^T + bias``."""

    in_features: int
    out_features: int

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class FoldForm:
    """How ``folded_layer`` stores what it folds.

    zeros: a real-valued zero point as ``"split"`` (integer zero points plus the exact
        correction), ``"float"`` or ``"round"`` (lossy); layers whose zero points stay integers
        (LR-QAT, integer-zero QA-LoRA) ignore it.
    bits, group_size: the integer format a merge requantizes to (QLoRA's NF4 base).
    """

    zeros: str = "split"
    bits: int = 4
    group_size: int = 32

    def __post_init__(self):
        check_choice(self.zeros, FOLD_ZEROS, "zeros")
        check_bits(self.bits)
        check_group_size(self.group_size)

    @classmethod
    def of(cls, form: FoldForm | str | None) -> FoldForm:
        """A ``FoldForm`` from itself, a zero-point form's name, or ``None`` (the defaults)."""
        if form is None:
            return cls()
        return form if isinstance(form, FoldForm) else cls(zeros=form)


class AdapterLayer(Layer):
    """Base of every layer that trains: a frozen ``base`` plus adapter parameters."""

    kind: ClassVar[str] = "adapter"
    peft_kind: ClassVar[str | None] = (
        None  # "lora" or "qalora": the PEFT adapter it reads and writes
    )
    base: nn.Module

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def set_io_dtype(self, dtype: torch.dtype) -> None:
        """Record the activations' dtype as an empty buffer, so that ``model.to(dtype)`` (which
        casts adapters too) keeps it true."""
        self.register_buffer("io", torch.empty(0, dtype=dtype), persistent=False)

    def _adapter_dtype(self) -> torch.dtype | None:
        """The dtype of the layer's own first parameter: the tensor, not a tracer's proxy."""
        own = next((p for p in self._parameters.values() if p is not None), None)
        return None if own is None else own.dtype

    @property
    def io_dtype(self) -> torch.dtype:
        io = self._buffers.get("io")
        return io.dtype if io is not None else (self._adapter_dtype() or torch.float32)

    @property
    def casts(self) -> bool:
        """Whether the forward casts into the adapters' dtype and back (read when traced)."""
        return self._adapter_dtype() not in (None, self.io_dtype)

    def folded_layer(self, form: FoldForm | str | None = None) -> nn.Module:
        raise NotImplementedError

    def fold_error(self, folded: nn.Module, x: torch.Tensor) -> float:
        """``max |folded(x) - self(x)| / max |self(x)|`` with dropout off; ``x`` ``(M, K)``."""
        was = self.training
        self.eval()
        with torch.no_grad():
            y = self(x)
            y_fold = folded(x)
        self.train(was)
        return ((y_fold - y).abs().max() / y.abs().max().clamp(min=1e-30)).item()

    def export_problem(self, fmt: str) -> str | None:
        if fmt == "qdq":
            return (
                f"unfolded {self.kind} adapter; format='qdq' is integer weights only: "
                f"lowrank_compiler.fold(model) first, or use format='matmulnbits'"
            )
        return None

    def peft_problem(self, writing: bool) -> str | None:
        """Why this layer has no PEFT LoRA form (``writing``: saving it; else loading into it)."""
        if self.peft_kind is None:
            return (
                f"is a {self.kind} layer, which has no PEFT adapter form; keep it with "
                "lrc.save_adapters"
            )
        return None

    def peft_scale(self) -> float:
        """PEFT's ``lora_A`` is ours divided by this (QA-LoRA: PEFT pools by sum over groups)."""
        return 1.0


_REGISTRY: dict[str, type[Layer]] = {}
_ADAPTER_NEEDS = ("adapter_parameters", "folded_layer", "describe")
_BASE_NEEDS = ("describe",)


def register_layer(cls: type[Layer]) -> type[Layer]:
    """Class decorator: record ``cls`` as a layer kind, after checking it follows the protocol."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"register_layer takes a subclass of Layer (or AdapterLayer), got {cls!r}")
    if not _KIND.match(cls.kind or ""):
        raise ValueError(
            f"{cls.__name__}.kind must be a kebab-case name like 'qalora', got {cls.kind!r}"
        )
    needs = _ADAPTER_NEEDS if issubclass(cls, AdapterLayer) else _BASE_NEEDS
    base = AdapterLayer if issubclass(cls, AdapterLayer) else Layer
    missing = [m for m in needs if getattr(cls, m) is getattr(base, m, None)]
    if missing:
        raise TypeError(
            f"layer kind {cls.kind!r} ({cls.__name__}) does not define {', '.join(missing)}"
        )
    other = _REGISTRY.get(cls.kind)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(
            f"a layer kind named {cls.kind!r} is already registered ({other.__module__}."
            f"{other.__qualname__})"
        )
    _REGISTRY[cls.kind] = cls
    return cls


def unregister_layer(kind: str) -> None:
    """Remove a registered kind (a plugin's or a test's); an unknown name is an error."""
    if _REGISTRY.pop(kind, None) is None:
        raise KeyError(f"no layer kind named {kind!r} is registered")


def layer_kinds() -> dict[str, type[Layer]]:
    """Every registered kind by name (the built-in ones register when ``runtime.layers``
    imports)."""
    return dict(_REGISTRY)


def is_layer(module: nn.Module) -> bool:
    """A layer of a registered kind (the summary's rows, what a compiled directory stores)."""
    return isinstance(module, Layer) and _REGISTRY.get(type(module).kind) is type(module)


def is_quantized_linear(module: nn.Module) -> bool:
    """A frozen quantized linear layer (``IntLinear``, ``GridBase``, ``NF4Linear``)."""
    return isinstance(module, QuantizedLinear)


def frozen_tensors(model: nn.Module) -> dict[int, torch.Tensor]:
    """``{id(t): t}`` for every tensor the model's layers declare never written: what a copy
    shares."""
    return {
        id(t): t
        for m in model.modules()
        if isinstance(m, Layer)
        for name in type(m).frozen_tensors
        if isinstance(t := getattr(m, name, None), torch.Tensor)
    }
