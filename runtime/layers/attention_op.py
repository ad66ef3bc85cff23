"""Fused decoder ops: ``torch.ops.lowrank_compiler.gqa`` and
``torch.ops.lowrank_compiler.rms_norm``.

Like ``int_linear``, each op's arguments are one onnxruntime node's inputs and attributes, in
its schema's order, so the ONNX translation (``onnx/attention.py``) is that one node:
``gqa`` -> ``com.microsoft::GroupQueryAttention``, ``rms_norm`` -> ``SimplifiedLayerNormalization``.
The eager kernels reproduce onnxruntime's CPU semantics in PyTorch; the fake kernels let
``torch.export`` trace them without running them.

``gqa`` (grouped-query attention over a shared max-length KV buffer, rotary inside)::

    query   [B, S, Hq*D]          or packed [B, S, (Hq + 2*Hkv)*D] with key = value = None
    key     [B, S, Hkv*D]
    value   [B, S, Hkv*D]
    past_key / past_value  [B, Hkv, M, D]   the max-length buffer (BNSH), M >= every total length
    seqlens_k              int32 [B]        tokens in row b's cache after this step, minus one
    total_sequence_length  int32 []         max_b seqlens_k[b] + 1 (the attention mask's width)
    cos_cache / sin_cache  [P, R/2]         rotary tables, row p = position p, R <= D rotated dims
    -> output [B, S, Hq*D], present_key / present_value [B, Hkv, M, D]

Positions (onnxruntime's): a first prompt (``S == total``) sits at 0..S-1 in every row; otherwise
row b's token s sits at ``seqlens_k[b] + 1 - S + s``. The new keys (rotated) and values are
written at those positions; the query at position p sees cache slots ``j <= min(p, seqlens_k[b])``
(and ``j > p - local_window_size`` when a window is set), scores ``scale * q.k`` (scale 0 means
``1/sqrt(D)``). Rows shorter than S in a first prompt are padded at the end (right padding).

Only the shared-buffer contract is modelled: present has past's shape. onnxruntime writes the
new keys in place when past and present are the same buffer (``past_present_share_buffer``);
in torch the op is functional (present is a new tensor).

``rms_norm``: ``y = weight * x / sqrt(mean(x^2, -1) + eps)``, normalised in float32 (HF's
Llama/Mistral/Qwen2/Phi-3 RMSNorm).
"""

from __future__ import annotations

from typing import Optional

import torch


def _rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> torch.Tensor:
    """x [B, S, H, D]; cos/sin [B, S, R/2]: rotate the first R dims (pairs (i, i+R/2), or (2i, 2i+1)
    when interleaved), keep the rest."""
    r = cos.shape[-1] * 2
    xr, rest = x[..., :r], x[..., r:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., : r // 2], xr[..., r // 2 :]
        out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    return torch.cat((out, rest), dim=-1)


@torch.library.custom_op("lowrank_compiler::gqa", mutates_args=())
def gqa(
    query: torch.Tensor,
    key: Optional[torch.Tensor],
    value: Optional[torch.Tensor],
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    seqlens_k: torch.Tensor,
    total_sequence_length: torch.Tensor,
    cos_cache: Optional[torch.Tensor],
    sin_cache: Optional[torch.Tensor],
    num_heads: int,
    kv_num_heads: int,
    scale: float = 0.0,
    do_rotary: int = 0,
    rotary_interleaved: int = 0,
    local_window_size: int = -1,
    softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, s = query.shape[0], query.shape[1]
    m, d = past_key.shape[2], past_key.shape[3]
    hq, hkv = num_heads, kv_num_heads
    if hq % hkv:
        raise ValueError(f"gqa: num_heads {hq} is not a multiple of kv_num_heads {hkv}")
    if key is None:  # packed q/k/v
        if query.shape[-1] != (hq + 2 * hkv) * d:
            raise ValueError(
                f"gqa: packed query has {query.shape[-1]} features, expected (num_heads {hq} + 2 * "
                f"kv_num_heads {hkv}) * head_size {d} = {(hq + 2 * hkv) * d}"
            )
        query, key, value = query.split([hq * d, hkv * d, hkv * d], dim=-1)
    q = query.reshape(b, s, hq, d)
    k = key.reshape(b, s, hkv, d)
    v = value.reshape(b, s, hkv, d)
    total = int(total_sequence_length.reshape(-1)[0])
    if total > m:
        raise ValueError(
            f"gqa: total_sequence_length {total} exceeds the KV buffer length {m} (past_key "
            f"{list(past_key.shape)}): allocate a longer buffer"
        )
    seqlens = seqlens_k.to(torch.int64)
    ar = torch.arange(s, device=query.device)
    pos = ar.expand(b, s) if s == total else seqlens[:, None] + 1 - s + ar[None, :]  # [B, S]
    if do_rotary:
        if int(pos.max()) >= cos_cache.shape[0]:
            raise ValueError(
                f"gqa: position {int(pos.max())} is past the rotary table's {cos_cache.shape[0]} "
                "rows"
            )
        cos, sin = cos_cache[pos].to(q.dtype), sin_cache[pos].to(q.dtype)
        q = _rotate(q, cos, sin, bool(rotary_interleaved))
        k = _rotate(k, cos, sin, bool(rotary_interleaved))
    present_k, present_v = past_key.clone(), past_value.clone()
    rows = torch.arange(b, device=query.device)[:, None].expand(b, s)
    present_k[rows, :, pos] = k.to(present_k.dtype)  # advanced indexing: [B, S, Hkv, D]
    present_v[rows, :, pos] = v.to(present_v.dtype)
    group = hq // hkv
    kk = present_k.repeat_interleave(group, dim=1).to(q.dtype)  # [B, Hq, M, D]
    vv = present_v.repeat_interleave(group, dim=1).to(q.dtype)
    scores = torch.einsum("bshd,bhmd->bhsm", q, kk) * (scale if scale != 0.0 else d**-0.5)
    if softcap > 0.0:
        scores = softcap * torch.tanh(scores / softcap)
    j = torch.arange(m, device=query.device)
    visible = (j[None, None, :] <= pos[:, :, None]) & (
        j[None, None, :] <= seqlens[:, None, None]
    )  # [B, S, M]
    if local_window_size > 0:
        visible &= j[None, None, :] > pos[:, :, None] - local_window_size
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    out = torch.einsum("bhsm,bhmd->bshd", scores.softmax(-1), vv)
    return out.reshape(b, s, hq * d).contiguous(), present_k, present_v


@gqa.register_fake
def _(
    query,
    key,
    value,
    past_key,
    past_value,
    seqlens_k,
    total_sequence_length,
    cos_cache,
    sin_cache,
    num_heads,
    kv_num_heads,
    scale=0.0,
    do_rotary=0,
    rotary_interleaved=0,
    local_window_size=-1,
    softcap=0.0,
):
    b, s, d = query.shape[0], query.shape[1], past_key.shape[3]
    return (
        query.new_empty((b, s, num_heads * d)),
        past_key.new_empty(past_key.shape),
        past_value.new_empty(past_value.shape),
    )


@torch.library.custom_op("lowrank_compiler::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


@rms_norm.register_fake
def _(x, weight, eps):
    return torch.empty_like(x)
