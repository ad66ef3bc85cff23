"""GPTQ: group quantization that corrects each rounding error in the columns still to come.

Round-to-nearest minimises ``|W - Wq|`` weight by weight. What matters is the layer's
output on real inputs: ``E[|x (W - Wq)^T|^2] = tr((W - Wq) H (W - Wq)^T)`` with the
input second moment ``H = E[x x^T]`` (``[K, K]``, ``runtime.calibrate``). GPTQ
(Frantar et al., 2022; the quantizer QA-LoRA's authors start from) quantizes the input
columns ``i = 0 .. K-1`` in order and spreads each column's error over the columns not
yet quantized, along ``H``'s inverse, the optimal least-squares update (OBS)::

    U = chol(inv(H + damp * mean(diag H) * I))^T       upper triangular
    q_i  = clamp(round(w_i / s + z), 0, 2^b - 1)         w_i: column i as updated so far
    e_i  = (w_i - s * (q_i - z)) / U[i, i]
    w_j -= e_i * U[i, j]                                 for every j > i

The format is exactly ``runtime.quant``'s (asymmetric, per output row and group of
``g`` consecutive inputs): when column ``i`` opens a group, that group's ``scale`` and
``zero`` are set by min-max over its columns *as updated by then*. So the codes, scales
and zeros drop into ``IntLinear`` unchanged, and QA-LoRA's fold stays exact.
Columns whose input is always zero (``H[i, i] = 0``) carry no signal: their weights
quantize as they are. Work is ``O(K^2 N)``; the column loop runs in blocks of ``block``
with the update to later blocks applied once per block (the paper's lazy batching).
"""

from __future__ import annotations

import torch

from .quant import qmax, quantize


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
        raise ValueError(f"input second moment [{h.shape[0]}, {h.shape[0]}] is not positive definite "
                         f"even with damp={damp}: use more calibration data or a larger damp ({e})") from None


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, *,
                  damp: float = 0.01, block: int = 128):
    """weight [N, K], H [K, K] -> (codes uint8 [N, K], scales f32 [N, L], zeros uint8 [N, L])."""
    n, k = weight.shape
    if hessian.shape != (k, k):
        raise ValueError(f"hessian has shape {list(hessian.shape)}, expected [{k}, {k}] for a weight [{n}, {k}]")
    g, top = group_size, qmax(bits)
    block = max(block // g, 1) * g  # whole groups per block: a group's scale sees its own updated columns
    u = inverse_factor(hessian, damp)  # (K, K)
    w = weight.detach().to(torch.float32).clone()  # (N, K), updated in place as errors spread
    codes = torch.empty(n, k, dtype=torch.uint8)
    scales = torch.empty(n, k // g)
    zeros = torch.empty(n, k // g)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        errs = torch.empty(n, b1 - b0)  # (N, block)
        for i in range(b0, b1):
            if i % g == 0:  # open group l: min-max over its columns as they stand now
                _, s, z = quantize(w[:, i:i + g], bits, g)
                scales[:, i // g], zeros[:, i // g] = s[:, 0], z[:, 0].float()
            s, z = scales[:, i // g], zeros[:, i // g]  # (N,)
            q = torch.clamp(torch.round(w[:, i] / s + z), 0, top)
            codes[:, i] = q.to(torch.uint8)
            e = (w[:, i] - s * (q - z)) / u[i, i]  # (N,)
            w[:, i + 1:b1] -= e[:, None] * u[i, i + 1:b1][None, :]
            errs[:, i - b0] = e
        w[:, b1:] -= errs @ u[b0:b1, b1:]  # (N, block) @ (block, K - b1): the lazy update
    return codes, scales, zeros.to(torch.uint8)
