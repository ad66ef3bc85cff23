"""The quantized linear op: ``torch.ops.lowrank_compiler.int_linear``.

    y = x W^T + bias,   W = dequantize(qweight, scales, zeros)     x: (..., K) -> y: (..., N)

Its arguments are exactly onnxruntime's ``com.microsoft::MatMulNBits`` inputs and
attributes (``quant.py`` has the layouts), so the ONNX translation is one node. It is a
``torch.library`` custom op with

- a fake (meta) implementation, so ``torch.export`` traces it without running it;
- an autograd formula: ``dL/dx = dL/dy W`` (and ``dL/dbias`` if asked); the codes,
  scales and zeros are frozen buffers and get no gradient.

The CPU/CUDA implementation dequantizes the weight on the fly (one ``[N, K]`` float
temporary, freed after the call) and calls ``F.linear``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .quant import dequantize


@torch.library.custom_op("lowrank_compiler::int_linear", mutates_args=())
def int_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               bias: Optional[torch.Tensor], bits: int, group_size: int) -> torch.Tensor:
    w = dequantize(qweight, scales, zeros, bits, group_size).to(x.dtype)  # (N, K)
    return F.linear(x, w, bias)


@int_linear.register_fake
def _(x, qweight, scales, zeros, bias, bits, group_size):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, qweight, scales, zeros, bias, bits, group_size = inputs
    ctx.save_for_backward(qweight, scales, zeros)
    ctx.bits, ctx.group_size = bits, group_size
    ctx.has_bias = bias is not None


def _backward(ctx, grad):  # grad: (..., N)
    qweight, scales, zeros = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = dequantize(qweight, scales, zeros, ctx.bits, ctx.group_size).to(grad.dtype)  # (N, K)
        grad_x = grad @ w  # (..., K)
    if ctx.has_bias and ctx.needs_input_grad[4]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
    return grad_x, None, None, None, grad_bias, None, None


int_linear.register_autograd(_backward, setup_context=_setup_context)
