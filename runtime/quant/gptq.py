"""GPTQ: group quantization that corrects each rounding error in the columns still to come.

Round-to-nearest minimises ``|W - Wq|`` weight by weight. What matters is the layer's
output on real inputs: ``E[|x (W - Wq)^T|^2] = tr((W - Wq) H (W - Wq)^T)`` with the
input second moment ``H = E[x x^T]`` (``[K, K]``, ``passes.helpers.moments``). GPTQ
(Frantar et al., 2022; the quantizer QA-LoRA's authors start from) quantizes the input
columns ``i = 0 .. K-1`` in order and spreads each column's error over the columns not
yet quantized, along ``H``'s inverse, the optimal least-squares update (OBS)::

    U = chol(inv(H + damp * mean(diag H) * I))^T       upper triangular
    q_i  = clamp(round(w_i / s + z), 0, 2^b - 1)         w_i: column i as updated so far
    e_i  = (w_i - s * (q_i - z)) / U[i, i]
    w_j -= e_i * U[i, j]                                 for every j > i

The format is exactly ``quant.group``'s (asymmetric, per output row and group of
``g`` consecutive inputs), so the codes, scales and zeros drop into ``IntLinear``
unchanged and QA-LoRA's fold stays exact. Two orders:

- ``act_order=True`` (default): columns in decreasing ``H[i, i]`` (the inputs with the
  most energy first, while the most columns remain to absorb their error), with each
  group's ``scale`` and ``zero`` fixed up front by min-max over the original weights
  ("static groups"), since a group's columns are no longer visited together.
- ``act_order=False``: columns in storage order; a group's ``scale`` and ``zero`` are set
  when its first column comes up, by min-max over its columns as updated by then.

On MiniLM (INT4 g32, 512 calibration sentences, no training) the held-out worst cosine
to fp32 goes RTN 0.940 -> 0.977 in storage order -> 0.981 with ``act_order``.
``grid=True`` also returns each weight's continuous grid position as GPTQ rounded it,
``w_i / s + z`` with ``w_i`` the column as error-corrected by then (float32 ``[N, K]``):
``clamp(round(grid), 0, 2^b - 1)`` is the code, and the fractional part is what LR-QAT
(``layers.lrqat``) starts from. The codes, scales and zeros are the same either way.
Columns whose input is always zero (``H[i, i] = 0``) carry no signal: their weights
quantize as they are. Work is ``O(K^2 N)``; the column loop runs in blocks of ``block``
with the update to later blocks applied once per block (the paper's lazy batching).
"""

from __future__ import annotations

import torch

from .formats import qmax
from .group import group_count, quantize


def gptq(hessian: torch.Tensor, damp: float = 0.01):
    """The quantizer a pass hands to ``IntLinear.from_weight`` / ``GridBase.from_weight``:
    ``fn(weight, bits, group_size, *, grid=False)`` running GPTQ along ``hessian`` [K, K]."""

    def quantizer(weight: torch.Tensor, bits: int, group_size: int, *, grid: bool = False):
        return gptq_quantize(weight, hessian, bits, group_size, damp=damp, grid=grid)

    quantizer.name = "GPTQ"
    return quantizer


def inverse_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``inv(H + damp * mean(diag H) * I)``, float32 [K, K]."""
    h = hessian.to(torch.float64).clone()  # (K, K)
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0  # a column no input ever reaches: any positive value keeps H invertible
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    try:
        inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
        return torch.linalg.cholesky(inv, upper=True).to(torch.float32)
    except torch.linalg.LinAlgError as e:
        raise ValueError(
            f"input second moment [{h.shape[0]}, {h.shape[0]}] is not positive definite "
            f"even with damp={damp}: use more calibration data or a larger damp ({e})"
        ) from None


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int,
    *,
    damp: float = 0.01,
    act_order: bool = True,
    block: int = 128,
    grid: bool = False,
):
    """weight [N, K], H [K, K] -> (codes uint8 [N, K], scales f32 [N, L], zeros uint8 [N, L]),
    and with ``grid=True`` the grid positions f32 [N, K] that were rounded (module docstring)."""
    n, k = weight.shape
    if hessian.shape != (k, k):
        raise ValueError(
            f"hessian has shape {list(hessian.shape)}, expected [{k}, {k}] for a weight [{n}, {k}]"
        )
    g, top = group_size, qmax(bits)
    w = weight.detach().to(torch.float32).clone()  # (N, K), updated in place as errors spread
    if act_order:
        _, scales, zeros = quantize(w, bits, g)  # static groups: fixed before any column moves
        order = torch.argsort(torch.diagonal(hessian), descending=True, stable=True)  # (K,)
    else:
        block = max(block // g, 1) * g  # whole groups per block: a group's scale sees its updates
        groups = group_count(k, g)  # a partial last group opens at its first column like the rest
        scales, zeros = torch.empty(n, groups), torch.empty(n, groups, dtype=torch.uint8)
        order = torch.arange(k)
    group = (order // g).tolist()  # the group of the column visited at step i
    w, u = (
        w[:, order],
        inverse_factor(hessian[order][:, order], damp),
    )  # (N, K), (K, K) in visit order
    codes = torch.empty(n, k, dtype=torch.uint8)
    positions = torch.empty(n, k) if grid else None  # (N, K) in visit order
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        errs = torch.empty(n, b1 - b0)  # (N, block)
        for i in range(b0, b1):
            grp = group[i]
            if not act_order and i % g == 0:  # open the group: min-max over its columns now
                _, s, z = quantize(w[:, i : i + g], bits, g)
                scales[:, grp], zeros[:, grp] = s[:, 0], z[:, 0]
            s, z = scales[:, grp], zeros[:, grp].to(torch.float32)  # (N,)
            p = w[:, i] / s + z  # (N,): the continuous grid position
            q = torch.clamp(torch.round(p), 0, top)
            if grid:
                positions[:, i] = p
            codes[:, i] = q.to(torch.uint8)
            e = (w[:, i] - s * (q - z)) / u[i, i]  # (N,)
            w[:, i + 1 : b1] -= e[:, None] * u[i, i + 1 : b1][None, :]
            errs[:, i - b0] = e
        w[:, b1:] -= errs @ u[b0:b1, b1:]  # (N, block) @ (block, K - b1): the lazy update
    back = torch.argsort(order)
    if grid:
        return codes[:, back], scales, zeros, positions[:, back]
    return codes[:, back], scales, zeros
