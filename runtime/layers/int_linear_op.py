"""The quantized linear op: ``torch.ops.lowrank_compiler.int_linear``.

    y = x W^T + bias,   W = dequantize(qweight, scales, zeros)     x: (..., K) -> y: (..., N)

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

from ..quant.group import dequantize


@torch.library.custom_op("lowrank_compiler::int_linear", mutates_args=())
def int_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bias: Optional[torch.Tensor],
    bits: int,
    group_size: int,
) -> torch.Tensor:
    w = dequantize(qweight, scales, zeros, bits, group_size).to(x.dtype)  # (N, K)
    return F.linear(x, w, bias)


@int_linear.register_fake
def _(x, qweight, scales, zeros, bias, bits, group_size):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, qweight, scales, zeros, bias, bits, group_size = inputs
    ctx.save_for_backward(qweight, scales, zeros, x if scales.requires_grad else None)
    ctx.bits, ctx.group_size = bits, group_size
    ctx.has_bias = bias is not None


def _backward(ctx, grad):  # grad: (..., N)
    qweight, scales, zeros, x = ctx.saved_tensors
    gsize = ctx.group_size
    grad_x = grad_bias = grad_scales = steps = None
    if ctx.needs_input_grad[2]:  # trained scales need q - z; W is then that times the scales
        steps = dequantize(
            qweight, torch.ones_like(scales, dtype=torch.float32), zeros, ctx.bits, gsize
        )  # (N, K)
    if ctx.needs_input_grad[0]:
        if steps is None:
            w = dequantize(qweight, scales, zeros, ctx.bits, gsize)  # (N, K)
        else:  # dequantize's own order of operations, (q - z) * s: the same bits
            w = (steps.unflatten(-1, (-1, gsize)) * scales.to(torch.float32)[..., None]).flatten(-2)
        grad_x = grad @ w.to(grad.dtype)  # (..., K)
    if ctx.has_bias and ctx.needs_input_grad[4]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
    if steps is not None:
        n, k = grad.shape[-1], x.shape[-1]
        g = grad.reshape(-1, n).to(torch.float32).T @ x.reshape(-1, k).to(torch.float32)  # (N, K)
        grad_scales = (g * steps).unflatten(-1, (k // gsize, gsize)).sum(-1).to(scales.dtype)
    return grad_x, None, grad_scales, None, grad_bias, None, None


int_linear.register_autograd(_backward, setup_context=_setup_context)
