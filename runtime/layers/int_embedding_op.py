"""The quantized lookup op: ``torch.ops.lowrank_compiler.int_embedding``.

    y[..., :] = dequantize(qweight, scales, zeros)[ids[...], :]     ids: (...) -> y: (..., D)

Its arguments are onnxruntime's ``com.microsoft::GatherBlockQuantized`` inputs in
``quant/group.py``'s MatMulNBits layout (a table of ``V`` rows is a layer with ``N = V`` outputs
and ``K = D`` inputs), so the ONNX translation is a ``Reshape`` of the codes and one node,
and a tied head's ``MatMulNBits`` can read the same bytes. Only the gathered rows are
dequantized. The table is frozen: no gradient flows to the codes, scales or zero points
(and ids are integers), so the op needs no autograd formula.
"""

from __future__ import annotations

import torch

from ..quant.group import dequantize


@torch.library.custom_op("lowrank_compiler::int_embedding", mutates_args=())
def int_embedding(
    ids: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    embedding_dim: int = 0,
) -> torch.Tensor:
    flat = ids.reshape(-1)  # (T,)
    d = embedding_dim or None  # 0: every group whole, D = L g
    rows = dequantize(qweight[flat], scales[flat], zeros[flat], bits, group_size, d)  # (T, D)
    return rows.reshape(*ids.shape, rows.shape[-1])


@int_embedding.register_fake
def _(ids, qweight, scales, zeros, bits, group_size, embedding_dim=0):
    return scales.new_empty((*ids.shape, embedding_dim or qweight.shape[1] * group_size))
