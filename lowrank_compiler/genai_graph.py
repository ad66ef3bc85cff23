"""The function a decoder folder's graph computes: a wrapper module around the model, its example
call and its free axes.

- ``CachedDecoder(model, layers)``: an HF causal LM as ``(input_ids, attention_mask,
  position_ids, *past) -> (logits, *presents)``; the past tensors go into a
  ``transformers.DynamicCache`` (``cache.update(k, v, layer)``), the model runs with
  ``past_key_values=cache, use_cache=True``; GPT-2 (``combined``) takes one ``[2, batch, kv_heads,
  past, head]`` tensor per layer instead of a key and a value.
- ``ProtocolDecoder(model, layers)``: a hand-written decoder's ``forward_with_cache`` (the
  protocol in ``PROTOCOL_TEXT``) as the same function.
- ``example_call`` / ``gqa_call``: one call's tensors for the plain and the fused graph;
  ``dynamic_shapes`` / ``gqa_dynamic_shapes``: their free axes (batch, seq, total, past or the
  buffer's ``max_length``); ``name_dims``: those axes' names in the file.
"""

from __future__ import annotations

import torch
from torch import nn

from .runtime.errors import ExportError
from .runtime.onnx.export import rename_dims


class CachedDecoder(nn.Module):
    """``model`` as a function of the inputs and the past; returns logits and the presents.

    ``combined``: one ``[2, batch, kv_heads, seq, head]`` tensor per layer (GPT-2's form in
    onnxruntime-genai) instead of a key and a value.
    """

    def __init__(self, model: nn.Module, layers: int, combined: bool = False):
        super().__init__()
        self.model, self.layers, self.combined = model, layers, combined

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(self.layers):
            if self.combined:
                key, value = past[i][0], past[i][1]
            else:
                key, value = past[2 * i], past[2 * i + 1]
            cache.update(key, value, i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
        )
        presents = out.past_key_values
        result = [out.logits]
        for i in range(self.layers):
            layer = presents.layers[i]
            result.extend(
                [torch.stack([layer.keys, layer.values])]
                if self.combined
                else [layer.keys, layer.values]
            )
        return tuple(result)


PROTOCOL = "forward_with_cache"
PROTOCOL_FIELDS = ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size")
PROTOCOL_TEXT = (
    f"a hand-written decoder exports when it has .config with {', '.join(PROTOCOL_FIELDS)} "
    f"(optional: num_key_value_heads, head_dim, max_position_embeddings, bos/eos/pad_token_id) and "
    f"{PROTOCOL}(input_ids, attention_mask, position_ids, past) -> (logits, presents), past and "
    f"presents one (key, value) pair per layer, [batch, kv_heads, length, head_dim]"
)


class ProtocolDecoder(nn.Module):
    """A hand-written decoder's ``forward_with_cache`` as the graph's function (the protocol above):
    ``past`` is a list of ``(key, value)`` per layer, each ``[batch, kv_heads, past, head_dim]``;
    it returns the logits ``[batch, seq, vocab]`` and the presents ``[batch, kv_heads, past + seq,
    head_dim]`` (the past with the new keys appended)."""

    def __init__(self, model: nn.Module, layers: int):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        out = getattr(self.model, PROTOCOL)(input_ids, attention_mask, position_ids, pairs)
        if not (
            isinstance(out, (tuple, list))
            and len(out) == 2
            and len(out[1]) == self.layers
            and all(isinstance(kv, (tuple, list)) and len(kv) == 2 for kv in out[1])
        ):
            raise ExportError(
                f"{type(self.model).__name__}.{PROTOCOL} must return (logits, presents) with one "
                f"(key, value) pair for each of its {self.layers} layers"
            )
        logits, presents = out
        return (logits, *[t for kv in presents for t in kv])


def follows_protocol(model: nn.Module) -> bool:
    return callable(getattr(model, PROTOCOL, None))


def example_call(
    batch: int,
    seq: int,
    past: int,
    layers: int,
    kv_heads: int,
    head_size: int,
    vocab: int,
    combined: bool,
    dtype: torch.dtype,
) -> tuple:
    """One call's arguments: ``seq`` new tokens after ``past`` cached ones (sizes >= 2: they stay
    free)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    shape = (batch, kv_heads, past, head_size)
    if combined:
        kv = [torch.randn(2, *shape, generator=g, dtype=dtype) for _ in range(layers)]
    else:
        kv = [torch.randn(shape, generator=g, dtype=dtype) for _ in range(2 * layers)]
    return (ids, mask, pos, *kv)


def gqa_call(
    batch: int,
    seq: int,
    past: int,
    layers: int,
    kv_heads: int,
    head_size: int,
    vocab: int,
    dtype: torch.dtype,
) -> tuple:
    """One fused-graph call: ``seq`` new tokens after ``past``, buffers 5 longer than the total."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    kv = [
        torch.zeros(batch, kv_heads, past + seq + 5, head_size, dtype=dtype)
        for _ in range(2 * layers)
    ]
    return (ids, mask, *kv)


def gqa_dynamic_shapes(layers: int):
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    total, max_length = torch.export.Dim("total"), torch.export.Dim("max_length")
    return (
        {0: batch, 1: seq},
        {0: batch, 1: total},
        tuple({0: batch, 2: max_length} for _ in range(2 * layers)),
    )


def dynamic_shapes(layers: int, combined: bool):
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    total, past = torch.export.Dim("total"), torch.export.Dim("past")
    kv = {1: batch, 3: past} if combined else {0: batch, 2: past}
    # by the forward's parameters: the *past varargs are one entry, a tuple (not a list)
    return (
        {0: batch, 1: seq},
        {0: batch, 1: total},
        {0: batch, 1: seq},
        tuple(dict(kv) for _ in range(layers if combined else 2 * layers)),
    )


def name_dims(proto, layers: int, combined: bool, past_label: str = "past") -> None:
    """The exporter's symbols (``s72``) become ``batch``, ``seq``, ``total`` and ``past`` (the fused
    graph's buffers: ``max_length``)."""
    rename = {}
    kv_axes = (1, 3) if combined else (0, 2)
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name == "input_ids":
            labels = {0: "batch", 1: "seq"}
        elif value.name == "attention_mask":
            labels = {0: "batch", 1: "total"}
        elif value.name.startswith("past"):
            labels = {kv_axes[0]: "batch", kv_axes[1]: past_label}
        else:
            continue
        for axis, label in labels.items():
            if dims[axis].dim_param and dims[axis].dim_param not in rename:
                rename[dims[axis].dim_param] = label
    rename_dims(proto, rename)
