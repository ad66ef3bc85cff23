"""The LR-QAT linear op: ``torch.ops.lowrank_compiler.lrqat_linear``.

    Phi = Phi0 + s_a B A                       s_a = alpha / r; A: [r, K], B: [N, r]; grid units
    q   = clamp(round(Phi), 0, 2^b - 1)        round: straight-through; clamp: its own gradient
    W   = scales (q - z)                       per group of g inputs; z integer
    y   = x W^T + bias                         x: (..., K) -> y: (..., N)

A ``torch.library`` custom op, so that a graph shows it as one node reading the layer's
tensors (``torch.export`` traces it through the fake kernel) and training keeps only ``x``
for the backward pass: ``W`` and the clamp's mask are recomputed there from the frozen
grid and the adapter (one ``[N, K]`` product more per step, ``[N, K]`` floats less per
layer held between forward and backward). Gradients, with ``G = dL/dW`` ``[N, K]``::

    dL/dx = dL/dy W
    dL/dW = (dL/dy)^T x                               summed over every leading axis
    dL/dPhi = G * scales * [0 <= round(Phi) <= 2^b - 1]
    dL/dB = s_a dL/dPhi A^T      dL/dA = s_a B^T dL/dPhi
    dL/dscales[j, l] = sum over group l of G * (q - z)          (``train_scales``)

``codes`` is the one function that computes ``q``; the fold calls it too, so the deployed
codes are the trained ones bit for bit.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..quant.formats import qmax
from ..quant.grid import decode_grid
from ..quant.group import pad_groups, zero_points


def grid_position(phi0, lora_A, lora_B, scale: float, bits: int) -> torch.Tensor:
    """Phi = Phi0 + s_a B A, f32 [N, K]."""
    return decode_grid(phi0, bits) + (lora_B.to(torch.float32) @ lora_A.to(torch.float32)) * scale


def codes(phi0, lora_A, lora_B, scale: float, bits: int) -> torch.Tensor:
    """q = clamp(round(Phi), 0, 2^b - 1), integer-valued f32 [N, K]."""
    return grid_position(phi0, lora_A, lora_B, scale, bits).round_().clamp_(0, qmax(bits))


def weight(
    q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int
) -> torch.Tensor:
    """W = scales (q - z), f32 [N, K], in ``quant.group.dequantize``'s order of operations (same
    bits)."""
    n, k = q.shape
    z = zero_points(zeros, bits, scales.shape[1])  # (N, L)
    w = pad_groups(q, group_size).reshape(n, -1, group_size) - z[..., None]  # (N, L, g)
    return w.mul_(scales.to(torch.float32)[..., None]).reshape(n, -1)[:, :k]


@torch.library.custom_op("lowrank_compiler::lrqat_linear", mutates_args=())
def lrqat_linear(
    x: torch.Tensor,
    phi0: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bias: Optional[torch.Tensor],
    scale: float,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    w = weight(codes(phi0, lora_A, lora_B, scale, bits), scales, zeros, bits, group_size)  # (N, K)
    return F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))


@lrqat_linear.register_fake
def _(x, phi0, lora_A, lora_B, scales, zeros, bias, scale, bits, group_size):
    return x.new_empty((*x.shape[:-1], phi0.shape[0]))


def _setup_context(ctx, inputs, output):
    x, phi0, lora_A, lora_B, scales, zeros, bias, scale, bits, group_size = inputs
    ctx.save_for_backward(x, phi0, lora_A, lora_B, scales, zeros)
    ctx.scale, ctx.bits, ctx.group_size = scale, bits, group_size
    ctx.has_bias = bias is not None


def _backward(ctx, grad):  # grad: (..., N)
    x, phi0, lora_A, lora_B, scales, zeros = ctx.saved_tensors
    need = ctx.needs_input_grad
    n, k = phi0.shape
    q = grid_position(phi0, lora_A, lora_B, ctx.scale, ctx.bits).round_()  # (N, K)
    inside = (q >= 0) & (q <= qmax(ctx.bits))  # the clamp's gradient
    q.clamp_(0, qmax(ctx.bits))
    w = weight(q, scales, zeros, ctx.bits, ctx.group_size)  # (N, K)
    grads = [None] * 10
    if need[0]:
        grads[0] = grad @ w.to(grad.dtype)  # (..., K)
    if ctx.has_bias and need[6]:
        grads[6] = grad.reshape(-1, n).sum(0)
    if not (need[2] or need[3] or need[4]):
        return tuple(grads)
    g_w = grad.reshape(-1, n).to(torch.float32).T @ x.reshape(-1, k).to(torch.float32)  # (N, K)
    g = ctx.group_size
    groups = (n, scales.shape[1], g)  # a partial last group padded with zero columns
    g_w = pad_groups(g_w, g)  # (N, L g)
    if need[4]:
        zq = pad_groups(q, g).reshape(groups) - zero_points(zeros, ctx.bits, groups[1])[..., None]
        grads[4] = (g_w.reshape(groups) * zq).sum(-1).to(scales.dtype)  # (N, L)
    g_phi = g_w.reshape(groups).mul_(scales.to(torch.float32)[..., None]).reshape(n, -1)[:, :k]
    g_phi = g_phi.mul_(inside)  # (N, K)
    if need[3]:
        grads[3] = ((g_phi @ lora_A.to(torch.float32).T) * ctx.scale).to(lora_B.dtype)  # (N, r)
    if need[2]:
        grads[2] = ((lora_B.to(torch.float32).T @ g_phi) * ctx.scale).to(lora_A.dtype)  # (r, K)
    return tuple(grads)


lrqat_linear.register_autograd(_backward, setup_context=_setup_context)
