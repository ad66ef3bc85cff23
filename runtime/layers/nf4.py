"""QLoRA's NF4 format (Dettmers et al. 2023): the baseline QA-LoRA is measured against.

The weight, flattened row-major, is cut into blocks of ``block_size`` (64) values; each
block is scaled by its absolute maximum and every value is replaced by the nearest of
16 fixed levels, the normal-distribution quantiles scaled to [-1, 1] (exact 0)::

    W[i] ~= absmax[block(i)] * NF4[code[i]]

Double quantization (optional) stores the absmax values themselves in 8 bits: minus
their mean, in blocks of 256, each block as int8 codes times one float scale
(bitsandbytes uses a dynamic 8-bit map here; the storage size is the same).

Storage (``B = ceil(N*K/64)`` blocks, the last one padded with zeros when 64 does not divide
``N*K``): ``codes`` uint8 [B*64/2] (two codes a byte, low nibble first), ``absmax`` f32 [B], or
``absmax_q`` int8 [B] + ``absmax_scale`` f32 [ceil(B/256)] + ``absmax_mean`` f32 [].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.group import pack, unpack
from ..quant.nf4 import DQ_BLOCK, NF4_LEVELS, nf4_quantize
from .linear_kinds import linear_shape, weight_out_in
from .protocol import QuantizedLinear, register_layer


@register_layer
class NF4Linear(QuantizedLinear):
    """A frozen linear layer stored in NF4 (``forward`` dequantizes, then ``F.linear``)."""

    kind = "nf4"
    frozen_tensors = ("codes",)

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        block_size: int = 64,
        double_quant: bool = False,
    ):
        super().__init__()
        n, k = weight.shape
        self.in_features, self.out_features = k, n
        self.block_size, self.double_quant = block_size, double_quant
        codes, absmax = nf4_quantize(weight, block_size)
        self.register_buffer("codes", pack(codes.reshape(-1, 8), 4).reshape(-1))
        if double_quant:
            mean = absmax.mean()
            centred = F.pad(absmax - mean, (0, (-absmax.numel()) % DQ_BLOCK)).reshape(-1, DQ_BLOCK)
            scale = centred.abs().amax(-1).clamp(min=1e-12) / 127.0
            q = torch.round(centred / scale[:, None]).clamp(-127, 127).to(torch.int8)
            self.register_buffer("absmax_q", q.reshape(-1)[: absmax.numel()].clone())
            self.register_buffer("absmax_scale", scale)
            self.register_buffer("absmax_mean", mean)
        else:
            self.register_buffer("absmax", absmax)
        self.register_buffer(
            "bias", None if bias is None else bias.detach().to(torch.float32).clone()
        )

    @classmethod
    def from_float(
        cls, module: nn.Module, *, block_size: int = 64, double_quant: bool = False
    ) -> "NF4Linear":
        linear_shape(module)
        return cls(
            weight_out_in(module),
            getattr(module, "bias", None),
            block_size=block_size,
            double_quant=double_quant,
        )

    def block_absmax(self) -> torch.Tensor:
        if not self.double_quant:
            return self.absmax
        n = self.absmax_q.numel()
        q = F.pad(self.absmax_q.to(torch.float32), (0, (-n) % DQ_BLOCK)).reshape(-1, DQ_BLOCK)
        return (q * self.absmax_scale[:, None]).reshape(-1)[:n] + self.absmax_mean

    def dequantize(self) -> torch.Tensor:
        """f32 [N, K]."""
        total = self.in_features * self.out_features  # the last block's padding left out
        blocks = self.block_absmax()
        codes = unpack(self.codes.reshape(-1, 4), 4, 8).reshape(-1)[
            : blocks.numel() * self.block_size
        ]
        values = NF4_LEVELS.to(self.codes.device)[codes.long()].reshape(-1, self.block_size)
        w = (values * blocks[:, None]).reshape(-1)[:total]
        return w.reshape(self.out_features, self.in_features)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # nn.Linear's argument name
        x = input
        return F.linear(
            x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "nf4",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bits": 4,
            "group_size": self.block_size,
        }

    def export_problem(self, fmt: str) -> str | None:
        return "NF4 (QLoRA) has no ONNX form; fold the model (merge + requantize) first"
