"""LR-QAT's frozen grid positions in fixed point: ``encode_grid`` / ``decode_grid``.

A weight's continuous grid position is ``Phi0 = W0 / s + z`` (scale ``s``, integer zero point
``z`` of its group); its code is ``clamp(round(Phi0), 0, 2^b - 1)``. The positions are stored in
unsigned fixed point (``formats.grid_storage``: a ``bits``-wide integer part and the rest of a
uint8, or of an int16 for 8-bit codes, as fraction bits), so that ``round`` of the decoded value
is the quantizer's code for every weight (``layers.grid_base`` says why, and holds the layer).
"""

from __future__ import annotations

import torch

from .formats import grid_storage, qmax


def encode_grid(grid: torch.Tensor, codes: torch.Tensor, bits: int) -> torch.Tensor:
    """f32 positions [N, K] and their codes uint8 [N, K] -> fixed point (module docstring) whose
    rounding is ``codes`` exactly."""
    dtype, frac = grid_storage(bits)
    one = float(1 << frac)
    fixed = torch.round(grid.clamp(0, qmax(bits)) * one)  # (N, K), integer-valued f32
    fixed -= torch.sign(
        torch.round(fixed / one) - codes.to(torch.float32)
    )  # off by one code: one step back
    tie = (
        torch.remainder(fixed, one) == one / 2
    )  # exactly half-way: any adapter step, however small, flips it
    fixed += tie * torch.sign(codes.to(torch.float32) * one - fixed)  # one step toward its own code
    return fixed.to(dtype)


def decode_grid(phi0: torch.Tensor, bits: int) -> torch.Tensor:
    """Fixed point -> f32 grid positions, exactly (integers below 2^15 times a power of two)."""
    return phi0.to(torch.float32) * (1.0 / (1 << grid_storage(bits)[1]))
