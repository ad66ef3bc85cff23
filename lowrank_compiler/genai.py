"""``export_genai``: an HF causal LM (float, or compiled and folded) to a folder that
onnxruntime-genai loads: ``model.onnx`` with a KV cache, ``genai_config.json``, tokenizer files.

The graph: a wrapper module takes ``(input_ids, attention_mask, position_ids, *past)``,
puts the past tensors into a ``transformers.DynamicCache`` (``cache.update(k, v, layer)``),
calls the model with ``past_key_values=cache, use_cache=True`` and returns the logits
(``[batch, seq, vocab]``, every position) and each layer's present key and value. It is
exported with ``torch.onnx.export(dynamo=True)``; each ``IntLinear`` becomes one
``com.microsoft::MatMulNBits`` node, as in ``export_onnx``. Free axes: batch, seq (new
tokens), total (attention mask: past + new) and past; a first step takes a past of length 0.

Names (onnxruntime-genai's defaults): inputs ``input_ids``, ``attention_mask``,
``position_ids`` (int64), ``past_key_values.{i}.key`` / ``.value``
(``[batch, kv_heads, past, head_size]``); outputs ``logits``, ``present.{i}.key`` /
``.value``. GPT-2 (``type: "gpt2"``, its own code path in onnxruntime-genai) takes one
combined tensor per layer instead: ``past_{i}`` -> ``present_{i}``, ``[2, batch, kv_heads,
past, head_size]`` (key, value).

``attention``: ``"plain"`` is the graph above, and ``search.past_present_share_buffer`` is
false (the graph concatenates past and new keys). ``"gqa"`` (``genai_attention.py``) lowers each
attention core to one ``com.microsoft::GroupQueryAttention`` over a shared max-length buffer
(``past_present_share_buffer: true``; past and present ``[batch, kv_heads, max_length,
head_size]``, one buffer bound as both), rotary inside the op, no ``position_ids`` input, q/k/v
fused into one projection where they match, RMSNorm as ``SimplifiedLayerNormalization`` and
residual Add + norm fused into ``SkipSimplifiedLayerNormalization`` (``runtime.onnx_fusions``).
``"auto"``: ``"gqa"`` for the rotary decoders it handles (Llama, Mistral, Qwen2, Phi-3 with a
fixed rope table), else ``"plain"`` (GPT-2, anything else); the choice and the reason go into
``lowrank_compiler.json``.

Hand-written decoders (no HF ``.config`` or ``generate``) follow a protocol instead
(``PROTOCOL_TEXT``): a ``.config`` with the cache's sizes and ``forward_with_cache(input_ids,
attention_mask, position_ids, past) -> (logits, presents)``; ``ProtocolDecoder`` wraps it as the
plain graph and the folder's type is ``decoder``.

The folder is staged beside ``out_dir`` and renamed into place at the end
(``runtime.files.staged_dir``); an existing folder is replaced only when this function
wrote it (its ``lowrank_compiler.json`` says so).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .api import compile_info
from .embeddings import check_embeddings, int4_embeddings
from .genai_attention import fused_attention, gqa_unsupported
from .runtime.errors import ExportError
from .runtime.files import staged_dir, write_atomic
from .runtime.layers.lora import AdapterLayer
from .runtime.onnx.attention import attention_translations
from .runtime.onnx.export import (
    check_exportable,
    export_proto,
    layer_table,
    rename_dims,
    write_model,
)
from .runtime.onnx.skip_norm import fuse_skip_norm
from .runtime.quant.formats import check_accuracy_level

MARKER = "lowrank_compiler.json"
MODEL_FILE = "model.onnx"
ATTENTION = ("auto", "gqa", "plain")
GENAI_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gpt2": "gpt2",
    "gemma": "gemma",
    "gemma2": "gemma2",
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)


def genai_type(config) -> str:
    """onnxruntime-genai's ``model.type`` for an HF config; ``decoder`` (generic) when it has no
    own."""
    return GENAI_TYPES.get(getattr(config, "model_type", None), "decoder")


def _dims(config) -> tuple[int, int, int, int]:
    """(layers, attention heads, kv heads, head size) of an HF decoder config."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    missing = [
        name
        for name, value in (
            ("num_hidden_layers", layers),
            ("num_attention_heads", heads),
            ("hidden_size", hidden),
        )
        if not value
    ]
    if missing:
        raise ExportError(
            f"{type(config).__name__} has no {', '.join(missing)}: the KV cache's shape comes from "
            f"them; export_genai takes an HF decoder-only causal LM (Llama, Mistral, Qwen2, Phi-3, "
            f"GPT-2, ...)"
        )
    kv_heads = (
        getattr(config, "num_key_value_heads", None) or heads
    )  # absent: every head has its own keys
    if heads % kv_heads:
        raise ExportError(
            f"{type(config).__name__}: num_attention_heads {heads} is not a multiple of "
            f"num_key_value_heads {kv_heads}"
        )
    head_size = getattr(config, "head_dim", None) or hidden // heads
    return int(layers), int(heads), int(kv_heads), int(head_size)


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


def io_names(layers: int, combined: bool, positions: bool = True) -> tuple[list[str], list[str]]:
    if combined:
        past = [f"past_{i}" for i in range(layers)]
        present = [f"present_{i}" for i in range(layers)]
    else:
        past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", *(["position_ids"] if positions else []), *past], [
        "logits",
        *present,
    ]


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


def _gqa_dynamic_shapes(layers: int):
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    total, max_length = torch.export.Dim("total"), torch.export.Dim("max_length")
    return (
        {0: batch, 1: seq},
        {0: batch, 1: total},
        tuple({0: batch, 2: max_length} for _ in range(2 * layers)),
    )


def _dynamic_shapes(layers: int, combined: bool):
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


def _token_ids(model: nn.Module):
    """bos, eos (an int or a list), pad: the generation config first, then the model config."""
    config = model.config
    gen = getattr(model, "generation_config", None)

    def pick(name):
        for source in (gen, config):
            value = getattr(source, name, None) if source is not None else None
            if value is not None:
                return value
        return None

    bos, eos, pad = pick("bos_token_id"), pick("eos_token_id"), pick("pad_token_id")
    if isinstance(eos, (list, tuple)) and len(eos) == 1:
        eos = eos[0]
    if pad is None:
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    return bos, eos, pad


def genai_config(
    model: nn.Module,
    *,
    context_length: int,
    accuracy_level: int = 4,
    filename: str = MODEL_FILE,
    shared_buffer: bool = False,
) -> dict:
    """The folder's ``genai_config.json``. Session options that onnxruntime-genai does not know
    by name pass to onnxruntime as config entries: ``session.qdq_matmulnbits_accuracy_level``
    keeps a QDQ file at its accuracy level (onnxruntime fuses DequantizeLinear + MatMul into
    MatMulNBits and otherwise computes those at level 4, int8 activations).
    ``shared_buffer``: the fused graph (no ``position_ids``; ``past_present_share_buffer:
    true``)."""
    config = model.config
    kind = genai_type(config)
    layers, heads, kv_heads, head_size = _dims(config)
    bos, eos, pad = _token_ids(model)
    combined = kind == "gpt2"
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    if not shared_buffer:
        inputs["position_ids"] = "position_ids"
    outputs = {"logits": "logits"}
    if combined:
        inputs["past_names"], outputs["present_names"] = "past_%d", "present_%d"
    else:
        inputs["past_key_names"], inputs["past_value_names"] = (
            "past_key_values.%d.key",
            "past_key_values.%d.value",
        )
        outputs["present_key_names"], outputs["present_value_names"] = (
            "present.%d.key",
            "present.%d.value",
        )
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    model_section = {
        "type": kind,
        "vocab_size": int(config.vocab_size),
        "context_length": int(context_length),
        "decoder": {
            "session_options": {
                "log_id": "onnxruntime-genai",
                "provider_options": [],
                "session.qdq_matmulnbits_accuracy_level": str(accuracy_level),
            },
            "filename": filename,
            "head_size": head_size,
            "hidden_size": int(hidden),
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "num_hidden_layers": layers,
            "inputs": inputs,
            "outputs": outputs,
        },
    }
    for key, value in (("bos_token_id", bos), ("eos_token_id", eos), ("pad_token_id", pad)):
        if value is not None:
            model_section[key] = value
    search = {
        "do_sample": False,
        "num_beams": 1,
        "num_return_sequences": 1,
        "max_length": int(context_length),
        "min_length": 0,
        "temperature": 1.0,
        "top_k": 1,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "length_penalty": 1.0,
        "diversity_penalty": 0.0,
        "no_repeat_ngram_size": 0,
        "early_stopping": True,
        "past_present_share_buffer": bool(shared_buffer),
    }
    return {"model": model_section, "search": search}


def _protocol_gaps(model: nn.Module) -> list[str]:
    """What a hand-written decoder lacks of the protocol (``PROTOCOL_TEXT``)."""
    config = getattr(model, "config", None)
    gaps = (
        [".config"]
        if config is None
        else [f"config.{f}" for f in PROTOCOL_FIELDS if not getattr(config, f, None)]
    )
    return gaps + ([] if follows_protocol(model) else [f"{PROTOCOL}()"])


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ExportError(
            f"export_genai takes an HF causal LM or a decoder module, got {type(model).__name__}"
        )
    if follows_protocol(model) or not hasattr(model, "config"):
        missing = _protocol_gaps(model)
        if missing:
            raise ExportError(
                f"{type(model).__name__} is not an HF causal LM, and lacks {', '.join(missing)} to "
                f"export with a KV cache: {PROTOCOL_TEXT}"
            )
    adapters = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
    if adapters:
        raise ExportError(
            f"{len(adapters)} layer(s) still hold adapters ({', '.join(adapters[:3])}): "
            f"lowrank_compiler.fold(model) first"
        )
    if follows_protocol(model):
        return
    if getattr(model.config, "is_encoder_decoder", False):
        raise ExportError(
            "export_genai takes a decoder-only model; encoder-decoder models are not supported"
        )
    can_generate = getattr(model, "can_generate", None)
    if not callable(can_generate) or not can_generate():
        raise ExportError(
            f"{type(model).__name__} has no KV cache to export (it cannot generate): export_genai "
            f"takes a causal LM such as LlamaForCausalLM, or a decoder of its own that lacks "
            f"{', '.join(_protocol_gaps(model))} here ({PROTOCOL_TEXT}); for an encoder use "
            "export_onnx"
        )


def _write_tokenizer(tokenizer, stage: Path) -> list[str]:
    if isinstance(tokenizer, (str, os.PathLike)):
        src = Path(tokenizer)
        if not src.is_dir():
            raise ExportError(f"tokenizer {str(src)!r} is not a folder")
        copied = []
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, stage / name)
                copied.append(name)
    elif hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(stage))
        copied = [name for name in TOKENIZER_FILES if (stage / name).is_file()]
    else:
        raise ExportError(
            f"tokenizer must be an HF tokenizer or its folder, got {type(tokenizer).__name__}"
        )
    missing = [n for n in ("tokenizer.json", "tokenizer_config.json") if n not in copied]
    if missing:
        raise ExportError(
            f"onnxruntime-genai's tokenizer needs {missing}; the tokenizer given has "
            f"{copied or 'no tokenizer files'} (save a fast tokenizer)"
        )
    return copied


def _attention(
    model: nn.Module, attention: str, kind: str, context_length: int
) -> tuple[str, str | None]:
    """(the graph to export, why not the fused one when it is not)."""
    if attention not in ATTENTION:
        raise ExportError(f"attention must be one of {ATTENTION}, got {attention!r}")
    if attention == "plain":
        return "plain", "asked for"
    if follows_protocol(model):
        if attention == "gqa":
            raise ExportError(
                f"attention='gqa' rewrites HF attention modules; {type(model).__name__} is "
                "exported "
                f"through {PROTOCOL}: use attention='plain'"
            )
        return "plain", f"a hand-written decoder ({PROTOCOL})"
    reason = (
        "GPT-2 has learned positions and no rotary attention"
        if kind == "gpt2"
        else gqa_unsupported(model, context_length)
    )
    if reason is None:
        return "gqa", None
    if attention == "gqa":
        raise ExportError(
            f"attention='gqa' cannot export {type(model).__name__}: {reason}; use attention='plain'"
        )
    return "plain", reason


def export_genai(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    example_inputs=None,
    tokenizer=None,
    format: str = "matmulnbits",
    accuracy_level: int = 4,
    context_length: int | None = None,
    attention: str = "auto",
    embeddings: str = "float",
    embedding_group_size: int = 32,
) -> Path:
    """Write ``model`` (an HF causal LM, float or compiled and folded) as an onnxruntime-genai
    folder.

    example_inputs: ``(batch, seq, past)`` sizes for the traced call (default ``(2, 3, 4)``;
        each >= 2 so that they stay free axes). Token values do not matter.
    tokenizer: an HF (fast) tokenizer or its folder: its files go into the folder
        (onnxruntime-genai needs ``tokenizer.json`` and ``tokenizer_config.json``).
    accuracy_level: MatMulNBits' compute precision (0: fp32; 4: int8 activations, faster).
    context_length: the longest sequence (prompt + new tokens); default the model's
        ``max_position_embeddings`` (``n_positions`` for GPT-2); the fused graph's rotary
        tables have this many rows.
    attention: ``"auto"``, ``"gqa"`` or ``"plain"`` (module docstring).
    embeddings: ``"float"`` or ``"int4"``: the vocabulary table as ``GatherBlockQuantized``
        (groups of ``embedding_group_size``); a tied head shares its codes, so the file holds
        the table once (``quantize_embeddings``; the model is unchanged afterwards).
    Returns the folder's path.
    """
    _check_model(model)
    out_dir = Path(out_dir)
    try:
        check_accuracy_level(accuracy_level)
    except ValueError as e:
        raise ExportError(str(e)) from None
    check_exportable(model, format)
    check_embeddings(embeddings, embedding_group_size, format)
    config = model.config
    if context_length is None:
        context_length = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        if context_length is None:
            raise ExportError(
                "the model's config has no max_position_embeddings: pass context_length="
            )
    if (
        isinstance(context_length, bool)
        or not isinstance(context_length, int)
        or context_length < 1
    ):
        raise ExportError(f"context_length must be a positive integer, got {context_length!r}")
    sizes = (2, 3, 4) if example_inputs is None else tuple(example_inputs)
    if len(sizes) != 3 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 2 for s in sizes
    ):
        raise ExportError(
            "example_inputs must be (batch, seq, past), each an integer >= 2, got "
            f"{example_inputs!r}"
        )
    mode, why_plain = _attention(model, attention, genai_type(config), context_length)
    gconfig = genai_config(
        model,
        context_length=context_length,
        accuracy_level=accuracy_level,
        shared_buffer=mode == "gqa",
    )
    with int4_embeddings(
        model, group_size=embedding_group_size, enabled=embeddings == "int4"
    ) as tables:
        _write_folder(
            model,
            out_dir,
            format=format,
            accuracy_level=accuracy_level,
            tokenizer=tokenizer,
            context_length=context_length,
            sizes=sizes,
            mode=mode,
            why_plain=why_plain,
            gconfig=gconfig,
            tables=tables,
        )
    return out_dir


def _write_folder(
    model: nn.Module,
    out_dir: Path,
    *,
    format: str,
    accuracy_level: int,
    tokenizer,
    context_length: int,
    sizes: tuple,
    mode: str,
    why_plain: str | None,
    gconfig: dict,
    tables: dict,
) -> None:
    """Stage the folder: the graph (fused or plain), genai_config.json, tokenizer files, marker."""
    config = model.config
    layers, _, kv_heads, head_size = _dims(config)
    kind = genai_type(config)
    combined = kind == "gpt2"
    gqa = mode == "gqa"
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    vocab = int(config.vocab_size)
    input_names, output_names = io_names(layers, combined, positions=not gqa)
    info = compile_info(model)
    layers_meta = layer_table(model, format)
    meta = {
        "writer": "lowrank_compiler.export_genai",
        "type": kind,
        "layers": layers_meta,
        "attention": mode,
        "embeddings": tables,
        "targets": sorted(op.name for op in info.linears if op.status == "selected")
        if info
        else sorted(layers_meta),
    }
    with staged_dir(out_dir, MARKER) as stage:
        if gqa:
            with fused_attention(model, context_length) as decoder:
                proto = export_proto(
                    decoder,
                    gqa_call(*sizes, layers, kv_heads, head_size, vocab, dtype),
                    fmt=format,
                    accuracy_level=accuracy_level,
                    dynamic_shapes=_gqa_dynamic_shapes(layers),
                    input_names=input_names,
                    output_names=output_names,
                    meta=meta,
                    what=" with GroupQueryAttention",
                    translations=attention_translations(),
                )
            fuse_skip_norm(proto)
        else:
            args = example_call(*sizes, layers, kv_heads, head_size, vocab, combined, dtype)
            wrapper = (
                ProtocolDecoder(model, layers)
                if follows_protocol(model)
                else CachedDecoder(model, layers, combined)
            )
            proto = export_proto(
                wrapper,
                args,
                fmt=format,
                accuracy_level=accuracy_level,
                dynamic_shapes=_dynamic_shapes(layers, combined),
                input_names=input_names,
                output_names=output_names,
                meta=meta,
                what=" with a KV cache",
            )
        _name_dims(proto, layers, combined, "max_length" if gqa else "past")
        write_model(proto, stage / MODEL_FILE)
        write_atomic(stage / "genai_config.json", json.dumps(gconfig, indent=2) + "\n")
        files = [MODEL_FILE, "genai_config.json"]
        if tokenizer is not None:
            files += _write_tokenizer(tokenizer, stage)
        record = {
            "writer": "lowrank_compiler.export_genai",
            "format": format,
            "accuracy_level": accuracy_level,
            "type": kind,
            "architecture": type(model).__name__,
            "files": files,
            "attention": mode,
        }
        if why_plain is not None:
            record["attention_reason"] = why_plain
        write_atomic(stage / MARKER, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _name_dims(proto, layers: int, combined: bool, past_label: str = "past") -> None:
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


__all__ = ["CachedDecoder", "ProtocolDecoder", "export_genai", "genai_config", "genai_type"]
