"""``IntLinear``: a frozen linear layer with group-quantized integer weights.

    y = x W^T + bias [+ group_sum(x) @ correction]
    W[j, i] = scales[j, l] * (q[j, i] - zeros[j, l]),   l = i // g

Buffers (``quant.py`` documents the byte layouts; all are MatMulNBits inputs as they are):

    qweight     uint8 [N, K/g, g*bits/8]   packed codes
    scales      f32   [N, K/g]
    zeros       uint8 [N, ceil(K/g*bits/8)] packed integer zero points, or f32 [N, K/g]
    bias        f32   [N] or absent
    correction  f32   [K/g, N] or absent: the exact fractional part of folded zero
                points (``zeros="split"``): ``correction = (scales * (round(z') - z'))^T``,
                stored transposed so the export is one MatMul on a named initializer

It has no parameters; the op it calls is ``torch.ops.lowrank_compiler.int_linear``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..quant.gptq import gptq_quantize
from ..quant.group import (
    dequantize,
    group_sum,
    pack_codes,
    pack_zeros,
    quantize_packed,
    zero_points,
)
from . import int_linear_op  # noqa: F401  (registers torch.ops.lowrank_compiler.int_linear)
from .linear_kinds import linear_shape, weight_out_in


class IntLinear(nn.Module):
    kind = "int"

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
    ):
        super().__init__()
        n, groups, blob = qweight.shape
        if blob * 8 != group_size * bits:
            raise ValueError(
                f"qweight blob of {blob} bytes does not hold {group_size} codes of {bits} bits"
            )
        self.bits, self.group_size = int(bits), int(group_size)
        self.in_features, self.out_features = groups * group_size, n
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
        hessian: torch.Tensor | None = None,
        damp: float = 0.01,
    ) -> "IntLinear":
        """Quantize a float weight ``[N, K]``: min-max per group, round to nearest, or GPTQ
        (``runtime.gptq``) when the input second moment ``hessian`` ``[K, K]`` is given."""
        b = None if bias is None else bias.detach().to(torch.float32).clone()
        if hessian is None:
            qweight, scales, zeros = quantize_packed(weight, bits, group_size)
            return cls(qweight, scales, zeros, bits=bits, group_size=group_size, bias=b)
        codes, scales, zeros = gptq_quantize(weight, hessian, bits, group_size, damp=damp)
        return cls(
            pack_codes(codes, bits, group_size),
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
        hessian: torch.Tensor | None = None,
        damp: float = 0.01,
    ) -> "IntLinear":
        """From an ``nn.Linear`` or GPT-2 ``Conv1D`` (GPTQ when ``hessian`` is given)."""
        linear_shape(module)  # raises for anything else
        return cls.from_weight(
            weight_out_in(module),
            getattr(module, "bias", None),
            bits=bits,
            group_size=group_size,
            hessian=hessian,
            damp=damp,
        )

    @property
    def float_zeros(self) -> bool:
        return self.zeros.dtype != torch.uint8

    def zero_points(self) -> torch.Tensor:
        """f32 [N, K/g]."""
        return zero_points(self.zeros, self.bits, self.in_features // self.group_size)

    def dequantize(self) -> torch.Tensor:
        """f32 [N, K]."""
        return dequantize(self.qweight, self.scales, self.zeros, self.bits, self.group_size)

    def group_offset(self) -> torch.Tensor:
        """f64 [N, K/g]: the part of ``W`` that is constant inside a group, so that
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
        )

    @staticmethod
    def concat(layers: list["IntLinear"]) -> "IntLinear":
        """One layer computing ``cat([layer(x) for layer in layers], -1)`` (e.g. fused q/k/v).

        Output rows are independent in every buffer, so this concatenates along N: codes
        ``[N, K/g, g*bits/8]``, scales ``[N, K/g]``, zero points (packed ``[N, ...]`` or float),
        bias ``[N]`` (zeros for a layer without one) and the correction ``D^T`` ``[K/g, N]`` along
        its N axis (zeros where absent). The layers must share K, bits, group size and zero form.
        """
        first = layers[0]
        for layer in layers[1:]:
            mismatch = [
                (name, getattr(first, name), getattr(layer, name))
                for name in ("in_features", "bits", "group_size", "float_zeros")
                if getattr(first, name) != getattr(layer, name)
            ]
            if mismatch:
                raise ValueError(
                    "cannot concatenate IntLinear layers: "
                    + ", ".join(f"{name} {a} vs {b}" for name, a, b in mismatch)
                )

        def joined(name: str, dim: int, shape):
            parts = [getattr(m, name) for m in layers]
            if all(p is None for p in parts):
                return None
            ref = next(p for p in parts if p is not None)
            return torch.cat(
                [p if p is not None else ref.new_zeros(shape(m)) for p, m in zip(parts, layers)],
                dim,
            )

        groups = first.in_features // first.group_size
        return IntLinear(
            torch.cat([m.qweight for m in layers]),
            torch.cat([m.scales for m in layers]),
            torch.cat([m.zeros for m in layers]),
            bits=first.bits,
            group_size=first.group_size,
            bias=joined("bias", 0, lambda m: (m.out_features,)),
            correction=joined("correction", 1, lambda m: (groups, m.out_features)),
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (..., K); nn.Linear's argument name
        x = input
        y = torch.ops.lowrank_compiler.int_linear(
            x, self.qweight, self.scales, self.zeros, self.bias, self.bits, self.group_size
        )  # (..., N)
        if self.correction is not None:
            y = y + group_sum(x, self.group_size) @ self.correction.to(
                x.dtype
            )  # (..., K/g) @ (K/g, N)
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

    def extra_repr(self) -> str:
        d = self.describe()
        return (
            f"in={self.in_features}, out={self.out_features}, bits={self.bits}, "
            f"group={self.group_size}, zeros={d['zeros']}"
        )
