"""``LoRALinear``: LoRA (Hu et al. 2021) around a frozen linear layer, float or QLoRA's NF4.
 For a frozen base layer ``W: [N, K]`` (out, in)::

    y = W x + b + s * B A dropout(x),     s = alpha / r
    A: [r, K]  random (Kaiming-uniform, as PEFT does)
    B: [N, r]  zero, so the wrapped layer starts exactly equal to the base

Only ``A`` and ``B`` train: ``r (K + N)`` parameters instead of ``K N``.

The base is an ``nn.Linear``, GPT-2's ``Conv1D`` or a quantized linear layer (QLoRA's
``NF4Linear``). The layer is a leaf of no tracer: its forward traces into plain ops, so graph
dumps show the adapter. ``folded_layer`` merges ``s B A`` into the base (float), or into its
dequantized weight and requantizes (the peers' QLoRA merge, the baseline).

Adapters train in ``adapter_dtype`` (float32 by default, as PEFT does) whatever the model's
dtype: in a bfloat16 or float16 model the forward casts the input into it and the adapter's
output back (``casts``), while the base computes in the model's dtype.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .int_linear import IntLinear
from .linear_kinds import linear_shape, weight_out_in
from .protocol import AdapterLayer, FoldForm, is_quantized_linear, register_layer


def _base_dtype(base: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The activations' dtype (the base's float weight's; float32 for a quantized base) and
    device."""
    weight = getattr(base, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return weight.dtype, weight.device
    return torch.float32, next(iter(base.buffers()), torch.empty(0)).device


@register_layer
class LoRALinear(AdapterLayer):
    """``base(x) + (alpha / r) * B(A(dropout(x)))`` around a frozen linear base."""

    kind = "lora"
    peft_kind = "lora"

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        adapter_dtype: torch.dtype = torch.float32,
        io_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        shape = linear_shape(base)
        self.base = base
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scale = self.alpha / self.rank
        self.in_features = shape.in_features
        self.out_features = shape.out_features
        dtype, device = _base_dtype(base)
        self.set_io_dtype(io_dtype or dtype)
        factory = {"dtype": adapter_dtype, "device": device}
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.in_features, **factory))  # (r, K)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, **factory))  # (N, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for p in self.base.parameters():
            p.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:
        """The base's weight, for code that reads ``layer.weight`` (tied heads, ``F.linear(x,
        m.weight)``)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)

    @classmethod
    def from_linear(
        cls,
        base: nn.Module,
        *,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        adapter_dtype: torch.dtype = torch.float32,
        io_dtype: torch.dtype | None = None,
    ) -> "LoRALinear":
        return cls(base, rank, alpha, dropout, adapter_dtype=adapter_dtype, io_dtype=io_dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (..., K); nn.Linear's argument name
        x = input
        y = self.base(x)  # (..., N)
        if self.casts:  # adapters in their own dtype (float32 in a bfloat16 model)
            x = x.to(self.lora_A.dtype)
        h = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        delta = F.linear(h, self.lora_B) * self.scale  # (..., N)
        return y + (delta.to(y.dtype) if self.casts else delta)

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        yield self.lora_A
        yield self.lora_B

    def folded_layer(self, form: FoldForm | str | None = None) -> nn.Module:
        """Merge ``s B A`` into the base weight; a new module.

        Float base: an ``nn.Linear`` with ``W + s B A`` (float arithmetic, no rounding
        beyond it). Quantized base (QLoRA's NF4): dequantize, add, requantize to an
        ``IntLinear`` of ``form.bits`` / ``form.group_size`` -- the peers' merge, which
        re-rounds every weight; it exists as the baseline.
        """
        form = FoldForm.of(form)
        delta = (
            self.lora_B.detach().double() @ self.lora_A.detach().double()
        ) * self.scale  # (N, K)
        bias = getattr(self.base, "bias", None)
        if is_quantized_linear(self.base):
            merged = (self.base.dequantize().double() + delta).to(torch.float32)
            return IntLinear.from_weight(merged, bias, bits=form.bits, group_size=form.group_size)
        weight = weight_out_in(self.base)
        out = nn.Linear(
            self.in_features,
            self.out_features,
            bias=bias is not None,
            dtype=weight.dtype,
            device=weight.device,
        )
        with torch.no_grad():
            out.weight.copy_((weight.double() + delta).to(weight.dtype))
            if bias is not None:
                out.bias.copy_(bias)
        out.requires_grad_(False)
        return out

    def describe(self) -> dict[str, Any]:
        weight = getattr(self.base, "weight", None)
        quantized = is_quantized_linear(self.base)
        bits = self.base.describe()["bits"] if quantized else weight.element_size() * 8
        return {
            "kind": "qlora" if getattr(self.base, "kind", None) == "nf4" else self.kind,
            "base": type(self.base).__name__,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "alpha": self.alpha,
            "bits": bits,
            "group_size": self.base.describe()["group_size"] if quantized else None,
            "adapter_params": self.lora_A.numel() + self.lora_B.numel(),
        }

    def lowering(self, fmt: str) -> str:
        return "float MatMul + float LoRA adapter"

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}"
        )
