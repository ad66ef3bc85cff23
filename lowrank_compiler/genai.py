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
fused into one projection where they match (the ONNX pass ``fuse-qkv``), RMSNorm as
``SimplifiedLayerNormalization`` and residual Add + norm fused into
``SkipSimplifiedLayerNormalization`` (the ONNX pass ``fuse-skip-norm``).
``"auto"``: ``"gqa"`` for the rotary decoders it handles (Llama, Mistral, Qwen2, Phi-3 with a
fixed rope table), else ``"plain"`` (GPT-2, anything else); the choice and the reason go into
``lowrank_compiler.json``.

Hand-written decoders (no HF ``.config`` or ``generate``) follow a protocol instead
(``PROTOCOL_TEXT``): a ``.config`` with the cache's sizes and ``forward_with_cache(input_ids,
attention_mask, position_ids, past) -> (logits, presents)``; ``ProtocolDecoder`` wraps it as the
plain graph and the folder's type is ``decoder``.

The folder is staged beside ``out_dir`` and renamed into place at the end
(``runtime.files.staged_dir``); an existing folder is replaced only when this function
wrote it (its ``lowrank_compiler.json`` says so). That record also holds the sha256 of every
file it lists: ``runtime.load(folder, verify=True)`` checks them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import onnx
import torch
from torch import nn

from .api import compile_info
from .dumps import DumpWriter
from .genai_attention import fused_attention, gqa_unsupported
from .genai_checks import (
    check_formats,
    check_model,
    context_length_of,
    traced_sizes,
    unknown_options,
)
from .genai_config import MODEL_FILE, dims, genai_config, genai_type, io_names
from .genai_graph import (
    PROTOCOL,
    CachedDecoder,
    ProtocolDecoder,
    dynamic_shapes,
    example_call,
    follows_protocol,
    gqa_call,
    gqa_dynamic_shapes,
    name_dims,
)
from .passes.helpers.embeddings import int4_embeddings
from .passes.helpers.graph import selected_targets
from .runtime.digests import folder_digests
from .runtime.errors import ExportError
from .runtime.files import check_dir, staged_dir, write_atomic
from .runtime.onnx.adapter_inputs import adapter_pass, check_adapter_inputs
from .runtime.onnx.attention import attention_translations
from .runtime.onnx.dtypes import export_dtype, floats_as
from .runtime.onnx.export import export_proto, layer_table, write_model
from .runtime.onnx.passes import OnnxPassSpec
from .runtime.quant.formats import FOLDER_RECORD

MARKER = FOLDER_RECORD
ATTENTION = ("auto", "gqa", "plain")
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
WRITER = "lowrank_compiler.export_genai"


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
    trace_sizes=None,
    tokenizer=None,
    format: str = "matmulnbits",
    accuracy_level: int = 4,
    context_length: int | None = None,
    attention: str = "auto",
    embeddings: str = "float",
    embedding_group_size: int = 32,
    dtype: str = "float32",
    unmerged: bool = False,
    adapter_inputs: str = "none",
    dump_dir=None,
    **unknown,
) -> Path:
    """Write ``model`` (an HF causal LM, float or compiled and folded) as an onnxruntime-genai
    folder.

    trace_sizes: ``(batch, seq, past)``, the sizes of the call traced (each >= 2 so that they
        stay free axes; token values do not matter); by default the batch and sequence ``compile``
        traced with (past 4), else ``(2, 3, 4)``.
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
    dtype: the graph's float type, ``"float32"`` (a bfloat16 or float16 model's float32 file) or
        ``"float16"`` (KV cache included); ``export_onnx`` says more.
    unmerged: write adapter layers as they compute instead of refusing them (LoRA: the base's
        node plus the adapter's float ``A`` and ``B`` MatMuls): the unmerged-adapter route peers
        take, slower than a fold; for comparisons.
    adapter_inputs: ``"zeros"`` or ``"zeros+scales"``: a base that integer-zero adapters swap
        (``export_adapter``): each MatMulNBits' zero points (and scales) also a graph input, the
        values as defaults (the ONNX pass ``expose-adapter-inputs``); accuracy level 0 only.
    dump_dir: write the ONNX stage's numbered dumps there (the graph torch gave, then one per
        ONNX pass: the fused graph's ``fuse-qkv`` and ``fuse-skip-norm`` among them).
    Returns the folder's path.
    """
    if unknown:
        unknown_options(unknown)
    check_model(model, unmerged=unmerged)
    out_dir = Path(out_dir)
    check_formats(model, format, accuracy_level, embeddings, embedding_group_size)
    check_adapter_inputs(adapter_inputs, accuracy_level, format)
    torch_dtype = export_dtype(dtype, format)
    context_length = context_length_of(model.config, context_length)
    options = dict(
        format=format,
        accuracy_level=accuracy_level,
        tokenizer=tokenizer,
        context_length=context_length,
        sizes=traced_sizes(model, trace_sizes),
        dump=_onnx_dumps(dump_dir),
        adapter_inputs=adapter_inputs,
    )
    with (
        int4_embeddings(
            model, group_size=embedding_group_size, enabled=embeddings == "int4"
        ) as tables,
        floats_as(model, torch_dtype),  # the INT4 tables' scales too
    ):
        mode, why_plain = _attention(model, attention, genai_type(model.config), context_length)
        _write_folder(model, out_dir, mode=mode, why_plain=why_plain, tables=tables, **options)
    return out_dir


def _onnx_dumps(dump_dir):
    """The ONNX stage's dump callback for ``dump_dir``, or None."""
    if dump_dir is None:
        return None
    check_dir(Path(dump_dir), "dump_dir")
    return DumpWriter(Path(dump_dir)).onnx


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
    tables: dict,
    dump=None,
    adapter_inputs: str = "none",
) -> None:
    """Stage the folder: the graph (fused or plain), genai_config.json, tokenizer files, marker."""
    meta = _graph_meta(model, format, mode, tables)
    gconfig = genai_config(
        model,
        context_length=context_length,
        accuracy_level=accuracy_level,
        shared_buffer=mode == "gqa",
    )
    with staged_dir(out_dir, MARKER) as stage:
        proto = _export_graph(
            model,
            sizes,
            mode,
            context_length,
            meta,
            fmt=format,
            accuracy_level=accuracy_level,
            dump=dump,
            adapter_inputs=adapter_inputs,
        )
        write_model(proto, stage / MODEL_FILE)
        write_atomic(stage / "genai_config.json", json.dumps(gconfig, indent=2) + "\n")
        files = [MODEL_FILE, "genai_config.json"]
        if (stage / f"{MODEL_FILE}.data").is_file():  # external weights past 2 GB
            files.insert(1, f"{MODEL_FILE}.data")
        if tokenizer is not None:
            files += _write_tokenizer(tokenizer, stage)
        record = _marker(model, format, accuracy_level, files, mode, why_plain)
        if adapter_inputs != "none":
            record["adapter_inputs"] = adapter_inputs
        record["sha256"] = folder_digests(stage, files)
        write_atomic(stage / MARKER, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _graph_meta(model: nn.Module, format: str, mode: str, tables: dict) -> dict:
    """The graph's metadata: the layers as exported, the attention, the embedding tables and
    the layers ``compile`` targeted (every exported one for a model it did not compile)."""
    info = compile_info(model)
    layers_meta = layer_table(model, format)
    return {
        "writer": WRITER,
        "type": genai_type(model.config),
        "layers": layers_meta,
        "attention": mode,
        "embeddings": tables,
        "targets": sorted((selected_targets(info.linears) if info else None) or layers_meta),
    }


def _export_graph(
    model: nn.Module,
    sizes: tuple,
    mode: str,
    context_length: int,
    meta: dict,
    adapter_inputs: str = "none",
    **options,
) -> onnx.ModelProto:
    """The decoder traced at ``sizes`` (batch, seq, past) with its cache, fused
    (``mode="gqa"``: GroupQueryAttention over a shared ``max_length`` buffer) or plain, its free
    axes named; ``options``: ``export_proto``'s format, accuracy level and dump."""
    config = model.config
    layers, _, kv_heads, head_size = dims(config)
    combined = genai_type(config) == "gpt2"  # one past tensor per layer, key and value stacked
    gqa = mode == "gqa"
    dtype = next(iter(_floats(model)), torch.float32)
    vocab = int(config.vocab_size)
    input_names, output_names = io_names(layers, combined, positions=not gqa)
    names = {"input_names": input_names, "output_names": output_names, "meta": meta}
    swap = () if adapter_inputs == "none" else (adapter_pass(adapter_inputs),)
    if gqa:
        with fused_attention(model, context_length) as decoder:
            proto = export_proto(
                decoder,
                gqa_call(*sizes, layers, kv_heads, head_size, vocab, dtype),
                dynamic_shapes=gqa_dynamic_shapes(layers),
                what=" with GroupQueryAttention",
                translations=attention_translations(),
                passes=(OnnxPassSpec("fuse-qkv"), OnnxPassSpec("fuse-skip-norm"), *swap),
                **names,
                **options,
            )
    else:
        wrapper = (
            ProtocolDecoder(model, layers)
            if follows_protocol(model)
            else CachedDecoder(model, layers, combined)
        )
        proto = export_proto(
            wrapper,
            example_call(*sizes, layers, kv_heads, head_size, vocab, combined, dtype),
            dynamic_shapes=dynamic_shapes(layers, combined),
            what=" with a KV cache",
            passes=swap,
            **names,
            **options,
        )
    name_dims(proto, layers, combined, "max_length" if gqa else "past")
    return proto


def _floats(model: nn.Module) -> list[torch.dtype]:
    """The dtypes of the model's float parameters."""
    return [p.dtype for p in model.parameters() if p.is_floating_point()]


def _marker(
    model: nn.Module,
    format: str,
    accuracy_level: int,
    files: list[str],
    mode: str,
    why_plain: str | None,
) -> dict:
    """``lowrank_compiler.json``: this function wrote the folder (so it may replace it), how, and
    why the graph is plain when the fused one was not taken."""
    record = {
        "writer": WRITER,
        "format": format,
        "accuracy_level": accuracy_level,
        "type": genai_type(model.config),
        "architecture": type(model).__name__,
        "files": files,
        "attention": mode,
        "dtype": str(next(iter(_floats(model)), torch.float32)).removeprefix("torch."),
    }
    if why_plain is not None:
        record["attention_reason"] = why_plain
    return record


__all__ = ["CachedDecoder", "ProtocolDecoder", "export_genai", "genai_config", "genai_type"]
