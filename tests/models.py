"""The small models every test shares, built from configs with random weights (no downloads)."""

from __future__ import annotations

import torch
from torch import nn

from lowrank_compiler.app.toy import GPTConfig, TinyGPT

VOCAB = 96


def tiny_gpt(seed: int = 0, **cfg) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(GPTConfig(vocab_size=VOCAB, n_embd=32, n_head=4, n_layer=2, **cfg)).eval()


def _quiet():
    from transformers.utils import logging

    logging.set_verbosity_error()


def hf_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    _quiet()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def hf_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    _quiet()
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=1,
    )
    return GPT2LMHeadModel(cfg).eval()


def hf_bert(seed: int = 0):
    from transformers import BertConfig, BertModel

    _quiet()
    torch.manual_seed(seed)
    cfg = BertConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    return BertModel(cfg).eval()


def ids(batch: int = 2, seq: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (batch, seq), generator=g)


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's main output tensor whatever its return type."""
    out = model(x)
    if isinstance(out, torch.Tensor):
        return out
    return (
        out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state
    )


class DataDependent(nn.Module):
    """A model torch.fx cannot trace (Python control flow on a tensor value)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x):
        h = self.fc1(x)
        if h.sum() > 0:
            h = h.relu()
        return self.fc2(h)


class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(x)


def lm_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of a TinyGPT on a fixed batch."""
    logits = model(x)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
    )


def train(
    model: nn.Module, x: torch.Tensor, steps: int = 50, lr: float = 1e-2, loss_fn=lm_loss
) -> list[float]:
    """AdamW on the trainable parameters; returns the losses."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def nudged(
    model: nn.Module, seed: int = 3, scale: float = 0.3, parts=("lora_A", "lora_B")
) -> nn.Module:
    """Adapters as after training: ``scale`` times seeded noise added to every ``parts`` tensor
    (B starts at zero, so ``parts=("lora_B",)`` makes the zero points really move); returns the
    model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(parts):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def external_data_onnx(location: str) -> bytes:
    """A one-MatMul ONNX model (x [1, 4] @ w [4, 4]) whose weight is external data at
    ``location``."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString()


def tiny_bpe_tokenizer(vocab_size: int):
    """An HF fast tokenizer built here (nothing downloaded): byte-pair merges over a-z, ids <
    ``vocab_size``; <pad> 0, </s> 1, <unk> 2."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: 3 + i for i, c in enumerate(letters)}}
    merges = [(a, b) for a in letters[:8] for b in letters[:8]][: vocab_size - len(vocab)]
    vocab.update({a + b: len(vocab) + i for i, (a, b) in enumerate(merges)})
    backend = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def made_once(make):
    """What a module fixture hands out: ``get(key)`` calls ``make(key)`` on first use, then reuses
    it."""
    made = {}

    def get(key):
        if key not in made:
            made[key] = make(key)
        return made[key]

    return get
