"""An onnxruntime-genai folder's ``genai_config.json`` for an HF decoder config, and its names.

``genai_config(model, ...)`` fills onnxruntime-genai's ``model`` and ``search`` sections: the
model ``type`` (``genai_type``: llama, mistral, qwen2, qwen3, phi3, gemma, gpt2, else the generic
``decoder``), the cache's sizes (``dims``), the graph's input and output names (``io_names``:
onnxruntime-genai's defaults; GPT-2 takes one combined past tensor per layer), the bos / eos /
pad ids (generation config first), the context length, and the session option that keeps a QDQ
file at its accuracy level.
"""

from __future__ import annotations

from torch import nn

from .runtime.errors import ExportError

MODEL_FILE = "model.onnx"
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


def genai_type(config) -> str:
    """onnxruntime-genai's ``model.type`` for an HF config; ``decoder`` (generic) when it has no
    own."""
    return GENAI_TYPES.get(getattr(config, "model_type", None), "decoder")


def dims(config) -> tuple[int, int, int, int]:
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
    layers, heads, kv_heads, head_size = dims(config)
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
