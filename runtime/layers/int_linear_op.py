"""The quantized linear op: ``torch.ops.lowrank_compiler.int_linear``.

    y = x W^T + bias,   W = dequantize(qweight, scales, zeros)     x: (..., K) -> y: (..., N)

``in_features`` is ``K``, which a partial last group makes smaller than ``L g`` (0: ``L g``).

Its arguments are exactly onnxruntime's ``com.microsoft::MatMulNBits`` inputs and
attributes (``quant/group.py`` has the layouts), so the ONNX translation is one node. It is a
``torch.library`` custom op with

- a fake (meta) implementation, so ``torch.export`` traces it without running it;
- an autograd formula: ``dL/dx = dL/dy W`` (and ``dL/dbias`` if asked); the codes and
  zeros are frozen buffers and get no gradient; scales get one only where the caller trains
  them (QA-LoRA's ``train_scales``): ``dL/dscales[j, l] = sum over group l of G (q - z)``,
  ``G = (dL/dy)^T x`` [N, K] summed over every leading axis (``x`` is kept for it then only).

The CPU/CUDA implementation dequantizes the weight on the fly (one ``[N, K]`` float
temporary, freed after the call) and calls ``F.linear``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..quant.group import dequantize, pad_groups


@torch.library.custom_op("lowrank_compiler::int_linear", mutates_args=())
def int_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bias: Optional[torch.Tensor],
    bits: int,
    group_size: int,
    in_features: int = 0,
) -> torch.Tensor:
    k = in_features or None  # 0: every group whole, K = L g
    w = dequantize(qweight, scales, zeros, bits, group_size, k).to(x.dtype)  # (N, K)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


@int_linear.register_fake
def _(x, qweight, scales, zeros, bias, bits, group_size, in_features=0):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, qweight, scales, zeros, bias, bits, group_size, in_features = inputs
    ctx.save_for_backward(qweight, scales, zeros, x if scales.requires_grad else None)
    ctx.bits, ctx.group_size, ctx.k = bits, group_size, x.shape[-1]
    ctx.has_bias = bias is not None


def _backward(ctx, grad):  # grad: (..., N)
    qweight, scales, zeros, x = ctx.saved_tensors
    gsize, k = ctx.group_size, ctx.k
    grad_x = grad_bias = grad_scales = steps = None
    if ctx.needs_input_grad[2]:  # trained scales need q - z; W is then that times the scales
        ones = torch.ones_like(scales, dtype=torch.float32)
        steps = dequantize(qweight, ones, zeros, ctx.bits, gsize, k)  # (N, K)
    if ctx.needs_input_grad[0]:
        if steps is None:
            w = dequantize(qweight, scales, zeros, ctx.bits, gsize, k)  # (N, K)
        else:  # dequantize's own order of operations, (q - z) * s: the same bits
            per_group = pad_groups(steps, gsize).unflatten(-1, (-1, gsize))  # (N, L, g)
            w = (per_group * scales.to(torch.float32)[..., None]).flatten(-2)[:, :k]
        grad_x = grad @ w.to(grad.dtype)  # (..., K)
    if ctx.has_bias and ctx.needs_input_grad[4]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
    if steps is not None:
        n = grad.shape[-1]
        g = grad.reshape(-1, n).to(torch.float32).T @ x.reshape(-1, k).to(torch.float32)  # (N, K)
        per_group = pad_groups(g * steps, gsize).unflatten(-1, (-1, gsize))  # (N, L, g)
        grad_scales = per_group.sum(-1).to(scales.dtype)
    return grad_x, None, grad_scales, None, grad_bias, None, None, None


int_linear.register_autograd(_backward, setup_context=_setup_context)
