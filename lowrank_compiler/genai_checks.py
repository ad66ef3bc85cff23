"""What ``export_genai`` refuses before it writes anything, and the sizes it settles on.

The model: an HF causal LM (decoder-only, ``can_generate()``) or a hand-written decoder that
follows the protocol (``PROTOCOL_TEXT``), with every adapter folded (an adapter layer has no
KV-cache graph of its own). The options: the format vocabulary of ``runtime.quant.formats``,
a positive ``context_length`` (default the model's ``max_position_embeddings``, GPT-2's
``n_positions``) and ``trace_sizes = (batch, seq, past)``, each >= 2 so that ``torch.export``
keeps them free axes (a size of 1 would be specialised into the graph).
Every refusal is an ``ExportError``, except an unknown keyword argument (a ``TypeError``, as
Python's own).
"""

from __future__ import annotations

import torch
from torch import nn

from .api import compile_info
from .genai_graph import PROTOCOL, PROTOCOL_FIELDS, PROTOCOL_TEXT, follows_protocol
from .passes.helpers.embeddings import check_embeddings
from .runtime.errors import ExportError
from .runtime.layers.protocol import AdapterLayer
from .runtime.onnx.export import check_exportable
from .runtime.quant.formats import check_accuracy_level


def _protocol_gaps(model: nn.Module) -> list[str]:
    """What a hand-written decoder lacks of the protocol (``PROTOCOL_TEXT``)."""
    config = getattr(model, "config", None)
    gaps = (
        [".config"]
        if config is None
        else [f"config.{f}" for f in PROTOCOL_FIELDS if not getattr(config, f, None)]
    )
    return gaps + ([] if follows_protocol(model) else [f"{PROTOCOL}()"])


def check_model(model, unmerged: bool = False) -> None:
    """``model`` is a decoder ``export_genai`` can write with a KV cache, its adapters folded
    (or ``unmerged``: kept as they compute)."""
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
    if adapters and not unmerged:
        raise ExportError(
            f"{len(adapters)} layer(s) still hold adapters ({', '.join(adapters[:3])}): "
            f"lowrank_compiler.fold(model) first (or unmerged=True to write them as they compute)"
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


def unknown_options(unknown: dict) -> None:
    """Refuse keyword arguments ``export_genai`` does not take (``example_inputs`` explained)."""
    if "example_inputs" in unknown:
        raise ExportError(
            "export_genai takes trace_sizes=(batch, seq, past): the sizes of the call it traces, "
            "not "
            f"tensors (example_inputs is compile's name for a call's tensors); got example_inputs="
            f"{unknown['example_inputs']!r}"
        )
    raise TypeError(f"export_genai() got unexpected keyword argument(s) {sorted(unknown)}")


def check_formats(
    model: nn.Module, format: str, accuracy_level: int, embeddings: str, group_size: int
) -> None:
    """The export format, MatMulNBits' accuracy level and the embedding form, each one known and
    fit for this model."""
    try:
        check_accuracy_level(accuracy_level)
    except ValueError as e:
        raise ExportError(str(e)) from None
    check_exportable(model, format)
    check_embeddings(embeddings, group_size, format)


def context_length_of(config, context_length: int | None) -> int:
    """``context_length`` as given, else the model's longest position; a positive integer."""
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
    return context_length


def traced_sizes(model: nn.Module, sizes) -> tuple[int, int, int]:
    """``(batch, seq, past)``: as given, else from the ids ``compile`` traced, else (2, 3, 4)."""
    if sizes is None:
        info = compile_info(model)
        ids = info.example[0][0] if info and info.example and info.example[0] else None
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) and ids.dim() == 2 else (0, 0)
        return (*shape, 4) if min(shape) >= 2 else (2, 3, 4)
    sizes = tuple(sizes) if isinstance(sizes, (tuple, list)) else (sizes,)
    if len(sizes) != 3 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 2 for s in sizes
    ):
        raise ExportError(
            f"trace_sizes must be (batch, seq, past), each an integer >= 2, got {sizes!r}"
        )
    return sizes


__all__ = ["check_formats", "check_model", "context_length_of", "traced_sizes", "unknown_options"]
