"""``IntLinear``: a frozen linear layer with group-quantized integer weights.

    y = x W^T + bias [+ group_sum(x) @ correction]
    W[j, i] = scales[j, l] * (q[j, i] - zeros[j, l]),   l = i // g,   L = ceil(K / g) groups

Buffers (``quant/group.py`` documents the byte layouts; all are MatMulNBits inputs as they are):

    qweight     uint8 [N, L, g*bits/8]   packed codes
    scales      f32   [N, L]
    zeros       uint8 [N, ceil(L*bits/8)] packed integer zero points, or f32 [N, L]
    bias        f32   [N] or absent
    correction  f32   [L, N] or absent: the exact fractional part of folded zero
                points (``zeros="split"``): ``correction = (scales * (round(z') - z'))^T``,
                stored transposed so the export is one MatMul on a named initializer

It has no parameters; the op it calls is ``torch.ops.lowrank_compiler.int_linear``. It
exports as one ``MatMulNBits`` node (or ``DequantizeLinear`` + ``MatMul``), the correction beside
it; float zero points where the format cannot take them (``formats.takes_float_zeros``) go out
in the exact split form.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..quant.formats import EMBEDDING_BITS, EXPORT_NODES, export_bits_problem, takes_float_zeros
from ..quant.group import (
    dequantize,
    group_count,
    group_sum,
    pack_codes,
    pack_zeros,
    quantize_packed,
    zero_points,
)
from . import int_linear_op  # noqa: F401  (registers torch.ops.lowrank_compiler.int_linear)
from .linear_kinds import linear_shape, weight_out_in
from .protocol import QuantizedLinear, register_layer


@register_layer
class IntLinear(QuantizedLinear):
    kind = "int"
    frozen_tensors = ("qweight",)

    def __init__(
        self,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        *,
        bits: int,
        group_size: int,
        bias: torch.Tensor | None = None,
        correction: torch.Tensor | None = None,
        in_features: int | None = None,
    ):
        super().__init__()
        n, groups, blob = qweight.shape
        if blob * 8 != group_size * bits:
            raise ValueError(
                f"qweight blob of {blob} bytes does not hold {group_size} codes of {bits} bits"
            )
        k = groups * group_size if in_features is None else int(in_features)
        if group_count(k, group_size) != groups:
            raise ValueError(
                f"qweight [{n}, {groups}, {blob}] holds {groups} groups of {group_size}; "
                f"in_features={k} needs {group_count(k, group_size)}"
            )
        self.bits, self.group_size = int(bits), int(group_size)
        self.in_features, self.out_features = k, n
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self.register_buffer("bias", bias)
        self.register_buffer("correction", correction)

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        bits: int,
        group_size: int,
        quantizer=None,
    ) -> "IntLinear":
        """Quantize a float weight ``[N, K]``: min-max per group and round to nearest, or with
        ``quantizer(weight, bits, group_size) -> (codes, scales, zeros)`` (``quant.gptq.gptq``)."""
        b = None if bias is None else bias.detach().to(torch.float32).clone()
        k = weight.shape[1]
        if quantizer is None:
            qweight, scales, zeros = quantize_packed(weight, bits, group_size)
            return cls(
                qweight, scales, zeros, bits=bits, group_size=group_size, bias=b, in_features=k
            )
        codes, scales, zeros = quantizer(weight, bits, group_size)
        return cls(
            pack_codes(codes, bits, group_size),
            scales,
            pack_zeros(zeros, bits),
            bits=bits,
            group_size=group_size,
            bias=b,
            in_features=k,
        )

    @classmethod
    def from_float(
        cls,
        module: nn.Module,
        *,
        bits: int = 4,
        group_size: int = 32,
        quantizer=None,
    ) -> "IntLinear":
        """From an ``nn.Linear`` or GPT-2 ``Conv1D`` (``quantizer`` as in ``from_weight``)."""
        linear_shape(module)  # raises for anything else
        return cls.from_weight(
            weight_out_in(module),
            getattr(module, "bias", None),
            bits=bits,
            group_size=group_size,
            quantizer=quantizer,
        )

    @property
    def float_zeros(self) -> bool:
        return self.zeros.dtype != torch.uint8

    def zero_points(self) -> torch.Tensor:
        """f32 [N, L]."""
        return zero_points(self.zeros, self.bits, self.qweight.shape[1])

    def dequantize(self) -> torch.Tensor:
        """f32 [N, K]."""
        return dequantize(
            self.qweight, self.scales, self.zeros, self.bits, self.group_size, self.in_features
        )

    def group_offset(self) -> torch.Tensor:
        """f64 [N, L]: the part of ``W`` that is constant inside a group, so that
        ``y = x (scales * q)^T + group_sum(x) @ group_offset()^T + bias``: ``-scales * zeros``
        plus the correction's ``D``."""
        off = -self.scales.double() * self.zero_points().double()  # (N, L)
        if self.correction is not None:
            off = off + self.correction.double().T
        return off

    def rows(self, index: torch.Tensor) -> "IntLinear":
        """A new ``IntLinear`` computing the outputs ``index`` (LongTensor) of this one."""
        return IntLinear(
            self.qweight[index],
            self.scales[index],
            self.zeros[index],
            bits=self.bits,
            group_size=self.group_size,
            bias=None if self.bias is None else self.bias[index],
            correction=None if self.correction is None else self.correction[:, index],
            in_features=self.in_features,
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (..., K); nn.Linear's argument name
        x = input
        y = torch.ops.lowrank_compiler.int_linear(
            x,
            self.qweight,
            self.scales,
            self.zeros,
            self.bias,
            self.bits,
            self.group_size,
            self.in_features,
        )  # (..., N)
        if self.correction is not None:
            sums = group_sum(x, self.group_size, self.in_features)  # (..., L)
            y = y + sums @ self.correction.to(x.dtype)  # (..., L) @ (L, N)
        return y

    def describe(self) -> dict[str, Any]:
        zeros = "float" if self.float_zeros else "int"
        if self.correction is not None:
            zeros = "split"
        return {
            "kind": f"int{self.bits}",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bits": self.bits,
            "group_size": self.group_size,
            "zeros": zeros,
        }

    def export_problem(self, fmt: str) -> str | None:
        return export_bits_problem(self.bits, fmt)

    def lowering(self, fmt: str) -> str:
        zeros = self.describe()["zeros"]
        if zeros == "float" and not takes_float_zeros(fmt, self.bits):
            zeros = "split"
        return f"{EXPORT_NODES[fmt]} int{self.bits} g{self.group_size} zeros={zeros}"

    def table_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(qweight, scales, zeros)`` for a vocabulary table tied to this head to share
        (``IntEmbedding.lent_by``): only 4-bit codes with integer zero points qualify."""
        if self.bits != EMBEDDING_BITS or self.float_zeros:
            return None
        return self.qweight, self.scales, self.zeros

    def extra_repr(self) -> str:
        d = self.describe()
        return (
            f"in={self.in_features}, out={self.out_features}, bits={self.bits}, "
            f"group={self.group_size}, zeros={d['zeros']}"
        )
