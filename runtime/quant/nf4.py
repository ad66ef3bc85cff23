"""QLoRA's NF4 format (Dettmers et al. 2023): numbers in, numbers out (``layers.nf4`` holds the
layer).

The weight, flattened row-major, is cut into blocks of ``block_size`` (64) values; each
block is scaled by its absolute maximum and every value is replaced by the nearest of
16 fixed levels, the normal-distribution quantiles scaled to [-1, 1] (exact 0)::

    W[i] ~= absmax[block(i)] * NF4[code[i]]

Double quantization (optional) stores the absmax values themselves in 8 bits: minus
their mean, in blocks of 256, each block as int8 codes times one float scale
(bitsandbytes uses a dynamic 8-bit map here; the storage size is the same).
"""

from __future__ import annotations

import torch

NF4_LEVELS = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)
DQ_BLOCK = 256


def nf4_quantize(weight: torch.Tensor, block_size: int = 64):
    """weight [N, K] -> (codes uint8 [B * block], absmax f32 [B]), ``B = ceil(N K / block)``: a
    partial last block is padded with zeros, which change no block's absmax (code 7 is 0.0)."""
    flat = weight.detach().to(torch.float32).reshape(-1)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % block_size)).reshape(-1, block_size)
    absmax = flat.abs().amax(-1)
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normed = flat / absmax[:, None]
    codes = (normed[..., None] - NF4_LEVELS).abs().argmin(-1)  # nearest level
    return codes.reshape(-1).to(torch.uint8), absmax
