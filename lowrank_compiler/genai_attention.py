"""The fused decoder graph for ``export_genai(attention="gqa")``: each attention core becomes one
``GroupQueryAttention`` node and each RMSNorm one ``SimplifiedLayerNormalization``.

``fused_attention(model, context_length)`` swaps, for the duration of an export,

- each layer's ``self_attn`` (Llama, Mistral, Qwen2, Phi-3) for ``FusedAttention``: the HF
  projections, then ``torch.ops.lowrank_compiler.gqa`` in place of rotary, cache update and
  attention. q/k/v stay three projections here (the ONNX pass ``fuse-qkv`` packs them into one,
  which GQA takes as a packed query ``[B, S, (Hq + 2 Hkv) D]``); Phi-3's ``qkv_proj`` already is
  one;
- each HF RMSNorm for ``FusedRMSNorm`` (``torch.ops.lowrank_compiler.rms_norm``),

and yields ``GQADecoder(model)``, the function exported:
``(input_ids [B, S], attention_mask [B, T], *past) -> (logits [B, S, V], *presents)`` with each
past a max-length buffer ``[B, Hkv, M, D]`` (present: the same shape, updated in place by
onnxruntime when bound to the same buffer). GQA derives everything else from the mask:
``seqlens_k = sum(mask, -1) - 1`` (int32) and ``total_sequence_length = T`` (int32 scalar); the
graph has no position ids. Each per-call tensor reaches the attention modules through the HF
model's ``**kwargs`` (``gqa_state``), so the rest of the HF forward runs unchanged.

Rotary tables come from the model's own ``rotary_emb`` evaluated at positions
``0..context_length-1``
(HF's rope variant and ``attention_scaling`` included), keeping the first ``R/2`` columns (HF
stores ``cat(freqs, freqs)``). Rope types whose frequencies depend on the sequence length
(``dynamic``, ``longrope`` past its original context) cannot be one table: ``gqa_unsupported``
says so, and ``attention="auto"`` then exports the plain graph.

Everything is undone on exit: the user's model keeps its own modules.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

# registers torch.ops.lowrank_compiler.gqa / rms_norm
from .runtime.layers import attention_op  # noqa: F401

ATTENTIONS = {"LlamaAttention", "MistralAttention", "Qwen2Attention", "Phi3Attention"}
RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Phi3RMSNorm"}
FIXED_ROPE = {"default", "linear", "llama3", "yarn"}


def _layers(model):
    inner = getattr(model, "model", None)
    return getattr(inner, "layers", None), getattr(inner, "rotary_emb", None)


def _window(attn, config) -> int | None:
    """The attention's sliding window (Qwen2: per layer; Mistral, Phi-3: the config's)."""
    window = (
        attn.sliding_window
        if hasattr(attn, "sliding_window")
        else getattr(config, "sliding_window", None)
    )
    return int(window) if window else None


def gqa_unsupported(model: nn.Module, context_length: int) -> str | None:
    """Why this model cannot take the fused graph, or None when it can."""
    config = model.config
    layers, rotary = _layers(model)
    if layers is None or rotary is None:
        return (
            f"{type(model).__name__} has no model.layers / model.rotary_emb (a Llama-style "
            "rotary decoder)"
        )
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        if type(attn).__name__ not in ATTENTIONS:
            return f"layer {i}: attention {type(attn).__name__} is not one of {sorted(ATTENTIONS)}"
    rope = getattr(rotary, "rope_type", "default")
    original = getattr(config, "original_max_position_embeddings", None)
    if rope not in FIXED_ROPE and not (
        rope == "longrope" and original and context_length <= original
    ):
        return f"rope type {rope!r} depends on the sequence length: it is not one rotary table"
    heads, kv_heads = (
        config.num_attention_heads,
        config.num_key_value_heads or config.num_attention_heads,
    )
    attn = layers[0].self_attn
    head = attn.head_dim
    rot = rotary(torch.zeros(1, 1), torch.arange(1)[None])[0].shape[-1]
    if heads % kv_heads:
        return f"{heads} attention heads are not a multiple of {kv_heads} kv heads"
    if head % 16 or rot % 16 or rot > head:
        return (
            f"head size {head} / rotary dims {rot}: onnxruntime's CPU GroupQueryAttention needs "
            "multiples "
            f"of 16 (rotary dims <= head size)"
        )
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if dtype not in (torch.float32, torch.float16):
        return f"parameters are {dtype}; the fused graph takes float32 or float16"
    return None


def rotary_tables(model: nn.Module, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[context_length, R/2]`` float32 from the model's own rotary module."""
    _, rotary = _layers(model)
    with torch.no_grad():
        cos, sin = rotary(torch.zeros(1, 1), torch.arange(context_length)[None])  # [1, P, R] each
    half = cos.shape[-1] // 2
    return cos[0, :, :half].float().contiguous(), sin[0, :, :half].float().contiguous()


class GQAState:
    """One call's tensors for every FusedAttention: past buffers, lengths, rotary tables; the
    attention modules put their presents in ``present`` (a plain object: torch.export traces
    through)."""

    def __init__(self, past, seqlens_k, total, cos, sin):
        self.past, self.seqlens_k, self.total, self.cos, self.sin = past, seqlens_k, total, cos, sin
        self.present = {}


class FusedAttention(nn.Module):
    """An HF attention's projections around one ``gqa`` call (packed q/k/v when ``qkv_proj`` is
    set)."""

    def __init__(self, attn: nn.Module, config):
        super().__init__()
        self.layer_idx = attn.layer_idx
        self.num_heads = int(config.num_attention_heads)
        self.kv_num_heads = int(config.num_key_value_heads or config.num_attention_heads)
        self.scaling = float(attn.scaling)
        window = _window(attn, config)
        self.local_window_size = window if window else -1
        self.o_proj = attn.o_proj
        if hasattr(attn, "qkv_proj"):  # Phi-3: already packed [q; k; v]
            self.qkv_proj = attn.qkv_proj
        else:
            self.q_proj, self.k_proj, self.v_proj = attn.q_proj, attn.k_proj, attn.v_proj

    @property
    def packed(self) -> bool:
        return hasattr(self, "qkv_proj")

    def forward(
        self, hidden_states, *args, gqa_state: GQAState, **kwargs
    ):  # HF's mask, positions: unused
        if self.packed:
            q, k, v = self.qkv_proj(hidden_states), None, None
        else:
            q, k, v = (
                self.q_proj(hidden_states),
                self.k_proj(hidden_states),
                self.v_proj(hidden_states),
            )
        st = gqa_state
        past_k, past_v = st.past[self.layer_idx]
        out, present_k, present_v = torch.ops.lowrank_compiler.gqa(
            q,
            k,
            v,
            past_k,
            past_v,
            st.seqlens_k,
            st.total,
            st.cos,
            st.sin,
            self.num_heads,
            self.kv_num_heads,
            self.scaling,
            1,
            0,
            self.local_window_size,
            0.0,
        )
        st.present[self.layer_idx] = (present_k, present_v)
        return self.o_proj(out), None


class FusedRMSNorm(nn.Module):
    """An HF RMSNorm as one ``rms_norm`` call (the same weight tensor)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight = norm.weight
        self.eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))

    def forward(self, x):
        return torch.ops.lowrank_compiler.rms_norm(x, self.weight, self.eps)


class GQADecoder(nn.Module):
    """``(input_ids, attention_mask, *past) -> (logits, *presents)``, past/present ``[B, Hkv, M,
    D]`` per layer, key then value."""

    def __init__(self, model: nn.Module, context_length: int):
        super().__init__()
        self.model = model
        self.layers = len(_layers(model)[0])
        cos, sin = rotary_tables(model, context_length)
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.register_buffer("cos_cache", cos.to(dtype), persistent=False)
        self.register_buffer("sin_cache", sin.to(dtype), persistent=False)

    def forward(self, input_ids, attention_mask, *past):
        seqlens_k = (attention_mask.sum(-1) - 1).to(torch.int32)
        total = torch.scalar_tensor(attention_mask.shape[1], dtype=torch.int32)
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        state = GQAState(pairs, seqlens_k, total, self.cos_cache, self.sin_cache)
        out = self.model(input_ids=input_ids, use_cache=False, return_dict=True, gqa_state=state)
        presents = [t for i in range(self.layers) for t in state.present[i]]
        return (out.logits, *presents)


@contextlib.contextmanager
def fused_attention(model: nn.Module, context_length: int):
    """Swap in FusedAttention / FusedRMSNorm (module docstring); yields the GQADecoder; undone on
    exit."""
    reason = gqa_unsupported(model, context_length)
    if reason is not None:
        raise ValueError(reason)
    swaps = []
    for name, module in list(model.named_modules()):
        if type(module).__name__ in ATTENTIONS:
            swaps.append((name, module, FusedAttention(module, model.config)))
        elif type(module).__name__ in RMS_NORMS:
            swaps.append((name, module, FusedRMSNorm(module)))
    try:
        for name, _, new in swaps:
            model.set_submodule(name, new)
        yield GQADecoder(model, context_length)
    finally:
        for name, old, _ in reversed(swaps):
            model.set_submodule(name, old)
