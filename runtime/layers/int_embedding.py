"""``IntEmbedding``: a vocabulary table stored as INT4 codes, looked up by ``int_embedding``.

A table ``E`` of ``V`` rows of width ``D`` is quantized exactly as a linear layer with
``N = V`` outputs and ``K = D`` inputs (``quant/group.py``: asymmetric min-max per row and group
of ``g`` columns, integer zero points)::

    qweight uint8 [V, D/g, g/2]      scales float [V, D/g]      zeros uint8 [V, ceil(D/g / 2)]
    E[v, i] ~= scales[v, l] * (q[v, i] - zeros[v, l]),   l = i // g,   |error| <= scales / 2

Because the layout is MatMulNBits', a head tied to the table (``lm_head.weight is
embed.weight``) and the lookup share one set of codes: ``tied_head`` builds the head's
``IntLinear`` over the very same buffers, and the exported file holds the table once.
Onnxruntime's ``GatherBlockQuantized`` supports 4 bits for tables everywhere it runs it, so
tables are 4-bit (``formats.EMBEDDING_BITS``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..quant.formats import EMBEDDING_BITS, QDQ_TABLE, check_group_size
from ..quant.group import dequantize, group_count, quantize_packed
from . import int_embedding_op  # noqa: F401  (registers torch.ops.lowrank_compiler.int_embedding)
from .int_linear import IntLinear
from .protocol import Layer, register_layer


def table_problem(name: str, weight: torch.Tensor, group_size: int) -> str | None:
    """Why table ``weight`` ([V, D]) cannot be stored in groups of ``group_size``, or None."""
    if weight.dim() != 2:
        return f"{name}: a table must be 2-D [rows, width], got shape {list(weight.shape)}"
    v, d = weight.shape
    if d % 2:  # a partial last group is fine; half a byte of a row is not
        return (
            f"{name}: width {d} (shape [{v}, {d}]) is odd: GatherBlockQuantized reads a row of "
            f"4-bit codes as whole bytes (the width is twice the bytes); leave this table float"
        )
    if not torch.isfinite(weight).all():
        return f"{name}: table has NaN/inf values (shape [{v}, {d}])"
    return None


@register_layer
class IntEmbedding(Layer):
    kind = "int-embedding"
    frozen_tensors = ("qweight",)

    def __init__(
        self,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        *,
        group_size: int,
        embedding_dim: int | None = None,
    ):
        super().__init__()
        rows, groups, blob = qweight.shape
        if blob * 8 != group_size * EMBEDDING_BITS:
            raise ValueError(
                f"qweight blob of {blob} bytes does not hold {group_size} codes of "
                f"{EMBEDDING_BITS} bits"
            )
        if zeros.dtype != torch.uint8:
            raise ValueError(
                f"a quantized table needs integer (uint8, packed) zero points, got {zeros.dtype}"
            )
        self.bits, self.group_size = EMBEDDING_BITS, int(group_size)
        width = groups * group_size if embedding_dim is None else int(embedding_dim)
        if group_count(width, group_size) != groups:
            raise ValueError(
                f"qweight holds {groups} groups of {group_size}; width {width} needs "
                f"{group_count(width, group_size)}"
            )
        self.num_embeddings, self.embedding_dim = rows, width
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)

    @classmethod
    def from_float(
        cls, module: nn.Embedding, *, group_size: int = 32, name: str = "embedding"
    ) -> "IntEmbedding":
        """Round ``module.weight`` to nearest, per row and group of ``group_size`` columns."""
        check_group_size(group_size)
        if not isinstance(module, nn.Embedding):
            raise TypeError(
                f"{name}: IntEmbedding.from_float takes an nn.Embedding, got "
                f"{type(module).__name__}"
            )
        if module.max_norm is not None:
            raise ValueError(
                f"{name}: an nn.Embedding with max_norm={module.max_norm} rescales rows on lookup; "
                f"a quantized table cannot, so leave it float"
            )
        weight = module.weight.detach().to(torch.float32)
        problem = table_problem(name, weight, group_size)
        if problem:
            raise ValueError(problem)
        qweight, scales, zeros = quantize_packed(weight, EMBEDDING_BITS, group_size)
        return cls(qweight, scales, zeros, group_size=group_size, embedding_dim=weight.shape[1])

    @classmethod
    def lent_by(cls, head: nn.Module) -> "IntEmbedding | None":
        """The table a tied head already holds, over its buffers (no copy), or None when the head
        cannot lend its codes: only a layer with ``table_codes()`` (4-bit codes and integer zero
        points, ``IntLinear``) can."""
        lend = getattr(head, "table_codes", None)
        codes = lend() if callable(lend) else None
        if codes is None:
            return None
        qweight, scales, zeros = codes
        return cls(
            qweight, scales, zeros, group_size=head.group_size, embedding_dim=head.in_features
        )

    def tied_head(self, bias: torch.Tensor | None = None) -> IntLinear:
        """An ``IntLinear`` computing ``x @ table^T`` over this table's own buffers."""
        return IntLinear(
            self.qweight,
            self.scales,
            self.zeros,
            bits=self.bits,
            group_size=self.group_size,
            bias=bias,
            in_features=self.embedding_dim,
        )

    def dequantize(self) -> torch.Tensor:
        """f32 [V, D]."""
        return dequantize(
            self.qweight, self.scales, self.zeros, self.bits, self.group_size, self.embedding_dim
        )

    def __getattr__(self, name: str):
        if (
            name == "weight"
        ):  # code that reads the float table directly (a functional tied head) cannot use codes
            raise AttributeError(
                f"this table is INT4 codes (IntEmbedding {self.extra_repr()}), not a float "
                ".weight: "
                f"code that reads .weight directly (e.g. F.linear(x, emb.weight)) needs the table "
                f"float; leave it out (quantize_embeddings' filter_fn) or use an nn.Linear head"
            )
        return super().__getattr__(name)

    def forward(
        self, input: torch.Tensor
    ) -> torch.Tensor:  # ids (...) -> (..., D); nn.Embedding's argument name
        return torch.ops.lowrank_compiler.int_embedding(
            input,
            self.qweight,
            self.scales,
            self.zeros,
            self.bits,
            self.group_size,
            self.embedding_dim,
        )

    def export_problem(self, fmt: str) -> str | None:
        return QDQ_TABLE if fmt == "qdq" else None

    def lowering(self, fmt: str) -> str:
        return f"GatherBlockQuantized int{self.bits} g{self.group_size}"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "bits": self.bits,
            "group_size": self.group_size,
            "shape": [self.num_embeddings, self.embedding_dim],
        }

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, "
            f"group_size={self.group_size}"
        )
