"""Training and measuring a sentence encoder as a retriever: query -> document.

One encoder embeds both sides (mean-pooled, L2-normalised, as ``encoder.mean_pool``). The
loss is the in-batch-negatives contrastive loss: each query's document is the positive,
the batch's other documents the negatives, cross-entropy over cosine / temperature.
Metrics: each query ranks every document of the set; recall@1 (its own document first)
and MRR@10 (1 / rank of its own document, 0 past rank 10).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from ..pretrained import tokenize
from ..runtime.progress import is_quiet
from .encoder import adamw, mean_pool

TEMPERATURE = 0.05


@dataclass(frozen=True)
class Lengths:
    """Tokens kept per query and per document (longer text is truncated)."""

    query: int = 32
    doc: int = 128


def encode(model, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    t = tokenize(tokenizer, texts, max_length=max_length)
    hidden = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
    return mean_pool(hidden, t["attention_mask"])


def contrastive_loss(q: torch.Tensor, d: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """In-batch negatives: row i of ``q`` should pick row i of ``d`` among all rows."""
    logits = q @ d.T / temperature
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(q)))


def train(model, tokenizer, pairs, *, steps: int, batch: int, lr: float, seed: int, lengths: Lengths,
          label: str, on_step=None, scale_lr: float | None = None) -> list[float]:
    """AdamW on the trainable parameters (trained scales at ``scale_lr``); batches drawn without
    repeats inside an epoch (a repeated pair would be its own negative). The loss of every step;
    ``on_step()`` after each."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = adamw(model, lr, scale_lr)
    model.eval()  # no dropout: every row trains the same deterministic function
    order: list[int] = []
    losses = []
    bar = tqdm(range(steps), desc=f"train {label}", unit="step", file=sys.stderr, mininterval=1.0,
               disable=True if is_quiet() else None)
    for _ in bar:
        if len(order) < batch:  # a new epoch; the last one's few leftovers are dropped
            order = torch.randperm(len(pairs), generator=gen).tolist()
        idx, order = order[:batch], order[batch:]
        q = encode(model, tokenizer, [pairs[i].query for i in idx], lengths.query)
        d = encode(model, tokenizer, [pairs[i].doc for i in idx], lengths.doc)
        loss = contrastive_loss(q, d)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_step is not None:
            on_step()
    return losses


def rank_metrics(q: torch.Tensor, d: torch.Tensor, k: int = 10) -> dict[str, float]:
    """recall@1 and MRR@k of queries ``q`` against documents ``d`` (row i's answer is row i)."""
    scores = q @ d.T
    own = scores.diagonal()[:, None]
    rank = (scores > own).sum(1) + 1  # ties count in the query's favour
    return {"recall@1": (rank == 1).float().mean().item(),
            f"mrr@{k}": torch.where(rank <= k, 1.0 / rank, torch.zeros(())).mean().item()}
