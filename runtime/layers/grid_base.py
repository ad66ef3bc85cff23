"""``GridBase``: LR-QAT's frozen base, each weight's continuous position on its quantization grid.

Per output row ``j`` and group ``l`` of ``g`` inputs, the quantizer (``quant/group.py``, RTN;
``quant/gptq.py``, GPTQ) fixes a scale ``s`` and an integer zero point ``z``; the grid position of
a weight is ``Phi0 = W0 / s + z`` (GPTQ: the error-compensated value it rounded), and its
code ``clamp(round(Phi0), 0, 2^b - 1)``. Buffers::

    phi0    uint8 [N, K] (bits <= 4) or int16 [N, K] (bits 8)   fixed point, F fraction bits
            (``formats.grid_storage``: 4 bits -> 4 fraction bits, 8 bits -> 7)
    scales  f32   [N, K/g]
    zeros   uint8 [N, ceil(K/g * bits / 8)]   packed integer zero points (``IntLinear``'s layout)
    bias    f32   [N] or absent

Why fixed point and not bf16: bf16 has 8 significant bits, so ``round(bf16(Phi0))`` differs
from the quantizer's code wherever ``Phi0`` lies within bf16's spacing of a half-way point
(on random Gaussian weights, g32: 2.1% of the codes at 4 bits, 9.6% at 8 bits). The fixed
point keeps a uniform ``2^-F`` resolution over the whole code range, in 1 byte a weight
for bits <= 4 (0.25x fp32, bf16 would be 0.5x), and the encoding moves any value that rounds
onto the wrong side of a half-way point by one step, so ``round(phi0 * 2^-F)`` is the
quantizer's code for every weight. A value that lands exactly on a half-way point (about one
in 2^F near one) moves one step toward its code too: there, the first adapter step of either
sign would flip the code (measured: 1.4% of MiniLM's GPTQ codes flipped at a learning rate of
1e-6), whatever the gradient asked. ``Phi0`` is clamped to ``[0, 2^b - 1]`` first: the codes
do not change (the clamp to that range happens after rounding anyway), and a weight far
outside the range starts where a small adapter step can move it.

The base's own forward is the quantizer's deployed layer, ``x (s (code - z))^T + bias``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.formats import export_bits_problem, grid_storage, qmax
from ..quant.grid import decode_grid, encode_grid
from ..quant.group import group_count, pack_zeros, pad_groups, quantize, unpack_codes, zero_points
from .linear_kinds import linear_shape, weight_out_in
from .protocol import QuantizedLinear, register_layer


@register_layer
class GridBase(QuantizedLinear):
    kind = "grid"
    frozen_tensors = ("phi0",)

    def __init__(
        self,
        phi0: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        *,
        bits: int,
        group_size: int,
        bias: torch.Tensor | None = None,
    ):
        super().__init__()
        n, k = phi0.shape
        if phi0.dtype != grid_storage(bits)[0] or scales.shape != (n, group_count(k, group_size)):
            raise ValueError(
                f"grid [{n}, {k}] {phi0.dtype}, scales {list(scales.shape)} do not make a "
                f"{bits}-bit base in groups of {group_size}"
            )
        self.bits, self.group_size = int(bits), int(group_size)
        self.in_features, self.out_features = k, n
        self.register_buffer("phi0", phi0)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self.register_buffer("bias", bias)

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        bits: int,
        group_size: int,
        quantizer=None,
    ) -> "GridBase":
        """Quantize a float weight ``[N, K]`` and keep the grid positions that were rounded: RTN,
        or ``quantizer(weight, bits, group_size, grid=True) -> (codes, scales, zeros, grid)``
        (``quant.gptq.gptq``)."""
        if quantizer is None:
            codes, scales, zeros = quantize(weight, bits, group_size)
            n, k = weight.shape
            w = pad_groups(weight.detach().to(torch.float32), group_size).reshape(n, -1, group_size)
            grid = w / scales[..., None] + zeros[..., None].to(torch.float32)  # quantize's order
            grid = grid.reshape(n, -1)[:, :k]  # (N, K)
        else:
            codes, scales, zeros, grid = quantizer(weight, bits, group_size, grid=True)
        b = None if bias is None else bias.detach().to(torch.float32).clone()
        return cls(
            encode_grid(grid, codes, bits),
            scales,
            pack_zeros(zeros, bits),
            bits=bits,
            group_size=group_size,
            bias=b,
        )

    @classmethod
    def from_float(
        cls,
        module: nn.Module,
        *,
        bits: int = 4,
        group_size: int = 32,
        quantizer=None,
    ) -> "GridBase":
        """From an ``nn.Linear`` or GPT-2 ``Conv1D`` (``quantizer`` as in ``from_weight``)."""
        linear_shape(module)  # raises for anything else
        return cls.from_weight(
            weight_out_in(module),
            getattr(module, "bias", None),
            bits=bits,
            group_size=group_size,
            quantizer=quantizer,
        )

    @classmethod
    def from_int_linear(cls, layer: nn.Module) -> "GridBase":
        """From an ``IntLinear`` with integer zero points: its codes as the grid positions (the
        fractional parts its quantizer rounded away are not known any more)."""
        if layer.float_zeros or layer.correction is not None:
            raise ValueError(
                f"an LR-QAT base needs integer zero points; this {layer.bits}-bit layer "
                f"[{layer.out_features}, {layer.in_features}] has {layer.describe()['zeros']} zeros"
            )
        codes = unpack_codes(
            layer.qweight, layer.bits, layer.group_size, layer.in_features
        )  # (N, K)
        bias = None if layer.bias is None else layer.bias.clone()
        return cls(
            encode_grid(codes.to(torch.float32), codes, layer.bits),
            layer.scales.clone(),
            layer.zeros.clone(),
            bits=layer.bits,
            group_size=layer.group_size,
            bias=bias,
        )

    def grid(self) -> torch.Tensor:
        """f32 [N, K]: Phi0."""
        return decode_grid(self.phi0, self.bits)

    def codes(self) -> torch.Tensor:
        """uint8 [N, K]: the quantizer's codes, ``clamp(round(Phi0), 0, 2^b - 1)``."""
        return torch.clamp(torch.round(self.grid()), 0, qmax(self.bits)).to(torch.uint8)

    def zero_points(self) -> torch.Tensor:
        """f32 [N, L]."""
        return zero_points(self.zeros, self.bits, self.scales.shape[1])

    def dequantize(self) -> torch.Tensor:
        """f32 [N, K]: the quantizer's deployed weight ``s (code - z)``."""
        n, k, g = self.out_features, self.in_features, self.group_size
        q = pad_groups(self.codes().to(torch.float32), g).reshape(n, -1, g)  # (N, L, g)
        w = (q - self.zero_points()[..., None]) * self.scales[..., None]
        return w.reshape(n, -1)[:, :k]

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        return F.linear(input, self.dequantize().to(input.dtype), self.bias)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": f"grid{self.bits}",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bits": self.bits,
            "group_size": self.group_size,
            "zeros": "int",
        }

    def export_problem(self, fmt: str) -> str | None:
        return export_bits_problem(self.bits, fmt)

    def extra_repr(self) -> str:
        frac = grid_storage(self.bits)[1]
        return (
            f"in={self.in_features}, out={self.out_features}, bits={self.bits}, "
            f"group={self.group_size}, "
            f"phi0={str(self.phi0.dtype).removeprefix('torch.')} with {frac} fraction bits"
        )
