"""What counts as a linear layer, and its shape.

Two module kinds compute ``y = x W^T + b`` and are rewritten by the passes:

- ``torch.nn.Linear``: weight ``[out, in]``;
- GPT-2's ``Conv1D`` (transformers.pytorch_utils): weight ``[in, out]``, computed as
  ``addmm(bias, x, weight)``. It is recognised by duck typing (class name ``Conv1D``,
  an ``nf`` attribute, a 2-D weight) so the runtime does not import transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .protocol import is_quantized_linear


def is_conv1d(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
    )


def is_linear_module(module: nn.Module) -> bool:
    """True for modules the passes know how to rewrite (nn.Linear and Conv1D)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


@dataclass(frozen=True)
class LinearShape:
    """Shape facts about one linear layer."""

    in_features: int
    out_features: int
    has_bias: bool
    kind: (
        str  # "linear" (weight [out, in]), "conv1d" (weight [in, out]), or a quantized layer's kind
    )


def linear_shape(module: nn.Module) -> LinearShape:
    if isinstance(module, nn.Linear):
        return LinearShape(
            module.in_features, module.out_features, module.bias is not None, "linear"
        )
    if is_conv1d(module):
        k, n = module.weight.shape  # Conv1D stores [in, out]
        return LinearShape(int(k), int(n), getattr(module, "bias", None) is not None, "conv1d")
    if is_quantized_linear(module):
        return LinearShape(
            module.in_features, module.out_features, module.bias is not None, module.kind
        )
    raise TypeError(f"{type(module).__name__} is not a linear layer (nn.Linear or GPT-2 Conv1D)")


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out, in]`` whatever the module stores (a view, no copy)."""
    if isinstance(module, nn.Linear):
        return module.weight
    if is_conv1d(module):
        return module.weight.t()
    raise TypeError(f"{type(module).__name__} is not a linear layer (nn.Linear or GPT-2 Conv1D)")
