"""LR-QAT (Bondarenko et al. 2024): a low-rank adapter inside the rounding; folds to integer codes.

Base ``GridBase`` (``grid_base.py``): per output row ``j`` and group ``l`` of ``g`` inputs a scale
``s[j, l]``, an integer zero point ``z[j, l]``, and each weight's frozen grid position
``Phi0 = W0 / s + z`` (fixed point, 1 byte a weight for bits <= 4). The adapter moves the
grid positions, in grid units, before they are rounded::

    Phi = Phi0 + (alpha / r) B A              A: [r, K] random,  B: [N, r] zero   (full width)
    q   = clamp(round_ste(Phi), 0, 2^b - 1)
    W   = s (q - z)                           y = x W^T + bias

``round_ste``: round forward, identity backward (straight-through). The clamp keeps its
real gradient (zero where ``round(Phi)`` falls outside the code range), as LR-QAT does.
``B = 0`` at the start, so the layer then computes exactly the quantizer's deployed layer
(RTN: ``Phi0 = W0 / s + z``; GPTQ: the error-compensated positions GPTQ rounded).
``train_scales=True`` also trains ``s`` as ``s = s0 exp(scale_gain)``, ``scale_gain`` [N, K/g]
starting at 0 (a parameter of this layer; the base's ``s0`` stays as compiled, so saved adapters
still name their base). A log factor, not ``s`` itself, so that a learning rate means a relative
step for scales of any size and weight decay pulls toward the quantizer's scale, not toward 0.

The fold computes ``q`` once with the same function the forward uses
(``lrqat_op.codes``) and packs it: an ``IntLinear`` with the trained codes, the (trained)
scales and the same integer zero points, no correction; its forward equals the training
forward bit for bit. The op (``lrqat_op``) keeps only ``x`` for the backward pass.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import nn

from ..quant.formats import EXPORT_NODES
from ..quant.group import pack_codes, trained_scales
from . import lrqat_op
from .grid_base import GridBase
from .int_linear import IntLinear
from .protocol import AdapterLayer, FoldForm, register_layer


@register_layer
class LRQATLinear(AdapterLayer):
    kind = "lrqat"

    def __init__(
        self,
        base: GridBase,
        rank: int,
        alpha: float,
        train_scales: bool = False,
        *,
        adapter_dtype: torch.dtype = torch.float32,
        io_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not isinstance(base, GridBase):
            raise TypeError(f"LR-QAT needs a GridBase base, got {type(base).__name__}")
        self.base = base
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        self.group_size, self.bits = base.group_size, base.bits
        self.in_features, self.out_features = base.in_features, base.out_features
        dev = base.scales.device
        self.set_io_dtype(io_dtype)  # the op computes B A in float32 whatever the adapters' dtype
        factory = {"dtype": adapter_dtype, "device": dev}
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.in_features, **factory))  # (r, K)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, **factory))  # (N, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.train_scales = bool(train_scales)
        gain = (
            nn.Parameter(torch.zeros_like(base.scales, dtype=torch.float32))
            if train_scales
            else None
        )  # (N, K/g)
        self.register_parameter("scale_gain", gain)

    @classmethod
    def from_base(
        cls,
        base: GridBase,
        *,
        rank: int,
        alpha: float,
        train_scales: bool = False,
        adapter_dtype: torch.dtype = torch.float32,
        io_dtype: torch.dtype = torch.float32,
    ) -> "LRQATLinear":
        return cls(base, rank, alpha, train_scales, adapter_dtype=adapter_dtype, io_dtype=io_dtype)

    @classmethod
    def from_float(
        cls,
        module: nn.Module,
        *,
        rank: int,
        alpha: float,
        bits: int = 4,
        group_size: int = 32,
        quantizer=None,
        train_scales: bool = False,
        adapter_dtype: torch.dtype = torch.float32,
    ) -> "LRQATLinear":
        """Quantize an ``nn.Linear`` / ``Conv1D`` (RTN, or ``quantizer`` as ``GridBase.from_weight``
        takes it) and wrap it; activations stay in the module's dtype."""
        io_dtype = next(module.parameters()).dtype
        base = GridBase.from_float(module, bits=bits, group_size=group_size, quantizer=quantizer)
        return cls(base, rank, alpha, train_scales, adapter_dtype=adapter_dtype, io_dtype=io_dtype)

    def current_scales(self) -> torch.Tensor:
        """f32 [N, K/g]: the trained scales ``s0 exp(scale_gain)``, or the base's. The fold calls
        this too, so the deployed scales are the ones the forward used, bit for bit."""
        return trained_scales(self.base.scales, self.scale_gain)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (..., K); nn.Linear's argument name
        base = self.base
        return torch.ops.lowrank_compiler.lrqat_linear(
            input,
            base.phi0,
            self.lora_A,
            self.lora_B,
            self.current_scales(),
            base.zeros,
            base.bias,
            self.scale,
            self.bits,
            self.group_size,
        )  # (..., N)

    def codes(self) -> torch.Tensor:
        """uint8 [N, K]: the codes the forward rounds to now."""
        with torch.no_grad():
            q = lrqat_op.codes(
                self.base.phi0, self.lora_A, self.lora_B, self.scale, self.bits
            )  # (N, K)
        return q.to(torch.uint8)

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        yield self.lora_A
        yield self.lora_B
        if self.scale_gain is not None:
            yield self.scale_gain

    def folded_layer(self, form: FoldForm | str | None = None) -> IntLinear:
        """The ``IntLinear`` this layer computes: trained codes, scales, the base's integer zero
        points. They are integers already, so every form (``"split"``, ``"float"``, ``"round"``)
        gives this same pure-integer layer, with no correction."""
        FoldForm.of(form)  # checked; every form folds the same
        base = self.base
        scales = self.current_scales().detach().to(torch.float32).clone()
        return IntLinear(
            pack_codes(self.codes(), self.bits, self.group_size),
            scales,
            base.zeros.clone(),
            bits=self.bits,
            group_size=self.group_size,
            bias=None if base.bias is None else base.bias.clone(),
            in_features=self.in_features,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "alpha": self.alpha,
            "bits": self.bits,
            "group_size": self.group_size,
            "zeros": "int",
            "train_scales": self.train_scales,
            "adapter_params": sum(p.numel() for p in self.adapter_parameters()),
        }

    def export_layer(self, fmt: str) -> nn.Module | None:
        """Exported as its fold: the same codes as its forward, in either format."""
        return self.folded_layer()

    def export_problem(self, fmt: str) -> str | None:
        return self.base.export_problem(fmt)

    def lowering(self, fmt: str) -> str:
        return (
            f"{EXPORT_NODES[fmt]} int{self.bits} g{self.group_size} zeros=int "
            f"(LR-QAT codes, folded at export)"
        )

    def peft_problem(self, writing: bool) -> str | None:
        return (
            "is an LR-QAT layer: its adapter moves integer codes inside the rounding, which no "
            "PEFT "
            "adapter computes; keep it with lrc.save_adapters, or fold it and export the integer "
            "model"
        )

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, alpha={self.alpha:g}, bits={self.bits}, group={self.group_size}, "
            f"train_scales={self.train_scales}"
        )
