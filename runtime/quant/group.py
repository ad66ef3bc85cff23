"""Group quantization: formats, packing, quantize / dequantize.

Asymmetric min-max round-to-nearest, per output row ``j`` and group ``l`` of ``g``
consecutive input columns (``K`` inputs, ``N`` outputs, ``L = ceil(K / g)`` groups; when ``g``
does not divide ``K`` the last group is partial, ``K - (L - 1) g`` columns wide)::

    lo = min(0, min W[j, group l])      hi = max(0, max W[j, group l])
    scale[j, l] = (hi - lo) / (2^b - 1)            (1 where hi == lo)
    zero[j, l]  = round(-lo / scale)               integer in [0, 2^b - 1]
    q[j, i]     = clamp(round(W[j, i] / scale + zero), 0, 2^b - 1)
    W[j, i]    ~= scale[j, l] * (q[j, i] - zero[j, l]),   |error| <= scale / 2

Including 0 in [lo, hi] keeps ``zero`` inside the code range, which is what makes the
``scale / 2`` bound hold for every weight. It also makes a partial group exact to compute as a
whole one padded with zero weights (``pad_groups``): zeros change neither its ``lo`` nor ``hi``.

Storage is onnxruntime's ``MatMulNBits`` layout, so export copies bytes:

    qweight  uint8 [N, L, g * b / 8]     codes, little-end first: for 4 bits the low
                                         nibble holds the even k (a bit stream, LSB first);
                                         a partial last group's blob is padded with code 0
                                         (as onnxruntime's quantizer pads; K says where it ends)
    scales   float [N, L]
    zeros    uint8 [N, ceil(L * b / 8)]  packed the same way along the groups, or
             float [N, L]                real-valued zero points (after a fold)

Packing works on runs of 8 codes -> ``b`` bytes, which covers b in {2, 3, 4, 8}.
"""

from __future__ import annotations

import torch

from .formats import BITS, MIN_GROUP, group_size_problem, qmax


def group_count(k: int, group_size: int) -> int:
    """``L = ceil(K / g)``: the last group holds the ``K - (L - 1) g`` inputs left."""
    return -(-k // group_size)


def pad_groups(t: torch.Tensor, group_size: int, k: int | None = None) -> torch.Tensor:
    """``t [..., K]`` with zero columns up to ``L g`` (``t`` itself when ``g`` divides ``K``).
    ``k``: ``K`` as a plain int, where ``t``'s shape is symbolic (a traced layer's forward)."""
    extra = (-(t.shape[-1] if k is None else k)) % group_size
    return torch.nn.functional.pad(t, (0, extra)) if extra else t


def group_widths(k: int, group_size: int, device=None) -> torch.Tensor:
    """f32 ``[L]``: each group's width, ``g`` but for a partial last group."""
    widths = torch.full((group_count(k, group_size),), float(group_size), device=device)
    widths[-1] = k - (len(widths) - 1) * group_size
    return widths


def check_layer(name: str, weight: torch.Tensor, bits: int, group_size: int) -> str | None:
    """Why ``weight`` ([N, K]) cannot be quantized with these settings, or None. Any width is
    held (a partial last group); only bits, the group rule and finite weights are checked."""
    if bits not in BITS:
        return f"{name}: bits={bits} is not one of {BITS}"
    if group_size_problem(group_size):
        return f"{name}: group_size={group_size} is not a power of two >= {MIN_GROUP}"
    n, k = weight.shape
    if k == 0 or n == 0:
        return f"{name}: an empty weight (shape [{n}, {k}]) has nothing to quantize"
    bad = count_nonfinite(weight)
    if bad:
        return f"{name}: weight has {bad} NaN/inf value(s) (shape [{n}, {k}])"
    return None


def count_nonfinite(weight: torch.Tensor) -> int:
    """NaN/inf entries of ``weight``; min and max propagate NaN, so the common all-finite case
    costs one pass and no boolean copy of the layer."""
    if weight.numel() == 0:
        return 0
    lo, hi = torch.aminmax(weight.detach())
    if torch.isfinite(lo) and torch.isfinite(hi):
        return 0
    return int((~torch.isfinite(weight)).sum().item())


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes along the last dim (length a multiple of 8) into uint8, LSB first."""
    *lead, length = codes.shape
    if length % 8:
        raise ValueError(f"pack needs a multiple of 8 codes per row, got {length}")
    if (
        8 % bits == 0
    ):  # 2, 4, 8 bits: whole codes per byte, shifts on uint8 (no int64 copy of a layer)
        per = 8 // bits
        c = codes.to(torch.uint8).reshape(*lead, length // per, per)
        out = c[..., 0].clone()
        for i in range(1, per):
            out |= c[..., i] << (bits * i)  # LSB first
        return out
    c = codes.to(torch.int64).reshape(*lead, length // 8, 8)
    shifts = torch.arange(8, device=codes.device) * bits
    word = (c << shifts).sum(-1, keepdim=True)  # (..., length/8, 1): 8 codes in 8*bits bits
    byte_shifts = torch.arange(bits, device=codes.device) * 8
    out = (word >> byte_shifts) & 0xFF  # (..., length/8, bits)
    return out.to(torch.uint8).reshape(*lead, length // 8 * bits)


def unpack(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of ``pack``: uint8 [..., ceil(length*bits/8)] -> uint8 codes [..., length]."""
    *lead, nbytes = packed.shape
    if (
        8 % bits == 0
    ):  # 2, 4, 8 bits: whole codes per byte, shifts on uint8 (the hot path of training)
        per = 8 // bits
        need = -(-length // per)
        p = packed[..., :need]
        if per == 1:
            return p[..., :length].clone()
        parts = [(p >> (bits * i)) & qmax(bits) for i in range(per)]  # LSB first
        return torch.stack(parts, dim=-1).reshape(*lead, -1)[..., :length]
    runs = -(-length // 8)
    need = runs * bits
    p = packed.to(torch.int64)
    if nbytes < need:  # a trimmed tail (zero points): pad with zero bytes
        p = torch.nn.functional.pad(p, (0, need - nbytes))
    p = p[..., :need].reshape(*lead, runs, bits)
    word = (p << (torch.arange(bits, device=packed.device) * 8)).sum(-1, keepdim=True)
    codes = (word >> (torch.arange(8, device=packed.device) * bits)) & qmax(bits)
    return codes.reshape(*lead, runs * 8)[..., :length].to(torch.uint8)


def pack_zeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer zero points [N, L] -> uint8 [N, ceil(L * bits / 8)] (MatMulNBits zero_points)."""
    n, groups = zeros.shape
    padded = torch.nn.functional.pad(zeros.to(torch.int64), (0, (-groups) % 8))
    return pack(padded, bits)[:, : -(-groups * bits // 8)].contiguous()


def quantize(weight: torch.Tensor, bits: int, group_size: int, codes_as: str = "uint8"):
    """weight [N, K] -> (codes uint8 [N, K], scales f32 [N, L], zeros uint8 [N, L]);
    ``codes_as="float"``: the codes as integer-valued float32 (what ``quantize_packed`` packs)."""
    n, k = weight.shape
    w = pad_groups(weight.detach().to(torch.float32), group_size).reshape(
        n, -1, group_size
    )  # (N, L, g)
    lo = w.amin(-1).clamp(max=0.0)
    hi = w.amax(-1).clamp(min=0.0)
    scales = (hi - lo) / qmax(bits)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    zeros = torch.round(-lo / scales).clamp(0, qmax(bits))
    codes = w / scales[..., None]  # one float temporary of the layer's size, then in place
    codes.add_(zeros[..., None]).round_().clamp_(0, qmax(bits))
    codes = codes.reshape(n, -1)[:, :k]
    return codes if codes_as == "float" else codes.to(torch.uint8), scales, zeros.to(torch.uint8)


def pack_codes(codes: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """codes uint8 [N, K] -> qweight uint8 [N, L, g * bits / 8] (a partial group padded with 0)."""
    n = codes.shape[0]
    return pack(pad_groups(codes, group_size).reshape(n, -1, group_size), bits)


def unpack_codes(
    qweight: torch.Tensor, bits: int, group_size: int, k: int | None = None
) -> torch.Tensor:
    """qweight uint8 [N, L, g * bits / 8] -> codes uint8 [N, K] (``K``: ``L g`` unless given)."""
    n, groups, _ = qweight.shape
    return unpack(qweight, bits, group_size).reshape(n, groups * group_size)[:, :k]


def trained_scales(scales: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
    """f32 [N, L]: ``scales exp(gain)``, the scales a ``train_scales`` layer trains (``gain`` a log
    factor), or ``scales`` itself without one. Forward and fold both call this: the same bits."""
    return scales if gain is None else scales.to(torch.float32) * torch.exp(gain)


def zero_points(zeros: torch.Tensor, bits: int, groups: int) -> torch.Tensor:
    """Stored zeros (packed uint8 or float [N, L]) -> float32 [N, L]."""
    if zeros.dtype == torch.uint8:
        return unpack(zeros, bits, groups).to(torch.float32)
    return zeros.to(torch.float32)


def row_chunk(n: int, k: int, device: torch.device) -> int:
    """Rows per chunk for the CPU loops over a [N, K] layer: ~4 MB of float32 temporaries,
    which stay in cache and are reused by the allocator (a whole-layer temporary costs a page
    fault per 4 KB written: quantize and dequantize ran 2-3x slower). One chunk on GPUs."""
    if device.type != "cpu":
        return max(1, n)
    return max(1, (1 << 20) // max(1, k))


def quantize_packed(weight: torch.Tensor, bits: int, group_size: int):
    """``quantize`` then ``pack_codes``/``pack_zeros``, a chunk of rows at a time (the same
    bytes): weight [N, K] -> (qweight uint8 [N, L, g*b/8], scales f32 [N, L], zeros packed)."""
    n, k = weight.shape
    groups = group_count(k, group_size)
    qweight = torch.empty(
        n, groups, group_size * bits // 8, dtype=torch.uint8, device=weight.device
    )
    scales = torch.empty(n, groups, dtype=torch.float32, device=weight.device)
    zeros = torch.empty(n, groups, dtype=torch.uint8, device=weight.device)
    rows = row_chunk(n, k, weight.device)
    for r in range(0, n, rows):
        codes, scales[r : r + rows], zeros[r : r + rows] = quantize(
            weight[r : r + rows], bits, group_size, codes_as="float"
        )
        codes = pad_groups(codes, group_size)  # a partial group's blob padded with code 0
        qweight[r : r + rows] = _pack_float_codes(codes.view(-1, groups, group_size), bits)
    return qweight, scales, pack_zeros(zeros, bits)


def _pack_float_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``pack`` of integer-valued float codes: for 2/4/8 bits the byte is summed in float
    (exact below 256) and converted once, one conversion of half (4 bits) the elements."""
    if 8 % bits:
        return pack(codes.to(torch.uint8), bits)
    per = 8 // bits
    c = codes.unflatten(-1, (codes.shape[-1] // per, per))  # (..., length / per, per)
    byte = c[..., 0].clone()
    for i in range(1, per):
        byte.add_(c[..., i], alpha=float(1 << (bits * i)))  # LSB first
    return byte.to(torch.uint8)


def dequantize(
    qweight, scales, zeros, bits: int, group_size: int, k: int | None = None
) -> torch.Tensor:
    """-> W float32 [N, K] with W[j, i] = scales[j, l] * (q[j, i] - zeros[j, l]) (``K``: ``L g``
    unless given; a partial group's padding is left out).

    Computed a chunk of rows at a time into one output (``row_chunk``): same values."""
    n, groups, _ = qweight.shape
    z = zero_points(zeros, bits, groups)  # (N, L)
    s = scales.to(torch.float32)  # (N, L)
    out = torch.empty(
        n, groups, group_size, dtype=torch.float32, device=qweight.device
    )  # (N, L, g)
    rows = row_chunk(n, groups * group_size, out.device)
    for r in range(0, n, rows):
        o = out[r : r + rows]
        o.copy_(unpack(qweight[r : r + rows], bits, group_size))  # codes as floats
        o.sub_(z[r : r + rows, :, None]).mul_(s[r : r + rows, :, None])
    return out.reshape(n, groups * group_size)[:, :k]


def group_sum(x: torch.Tensor, group_size: int, k: int | None = None) -> torch.Tensor:
    """x [..., K] -> [..., L]: the sum of each group's inputs (a partial group's own); ``k`` as in
    ``pad_groups``."""
    return pad_groups(x, group_size, k).unflatten(-1, (-1, group_size)).sum(-1)


def check_layers(problems: list[str], *, hint: str) -> None:
    """Raise one error listing every layer that cannot be quantized as asked."""
    from ..errors import PolicyError

    if problems:
        listing = "\n  ".join(problems)
        raise PolicyError(
            f"{len(problems)} layer(s) cannot be quantized as asked:\n  {listing}\n{hint}"
        )


GROUP_HINT = (
    "Fix the weights, or use bits and a group_size the format holds, an override for these "
    "layers (overrides={'<pattern>': {'bits': ..., 'group_size': ...}}), or exclude them."
)
