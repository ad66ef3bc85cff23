"""Training and measuring a sentence encoder as a retriever: query -> document.

One encoder embeds both sides (mean-pooled, L2-normalised, as ``encoder.mean_pool``). The
loss is the in-batch-negatives contrastive loss: each query's document is the positive,
the batch's other documents the negatives, cross-entropy over cosine / temperature.
Metrics: each query ranks every document of the set; recall@1 (its own document first)
and MRR@10 (1 / rank of its own document, 0 past rank 10).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ...runtime.progress import training_bar
from ..pretrained import tokenize
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


def contrastive_loss(
    q: torch.Tensor, d: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """In-batch negatives: row i of ``q`` should pick row i of ``d`` among all rows."""
    logits = q @ d.T / temperature
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(q)))


def get_params(model) -> dict[str, torch.Tensor]:
    """A copy of the model's trainable parameters, by name (``set_params`` puts them back)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def set_params(model, params: dict[str, torch.Tensor]) -> None:
    """Copy ``params`` (name -> tensor) into the model's parameters of those names."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in params:
                p.copy_(params[n])


class Resumable:
    """``snapshot`` / ``restore`` of a trainer's ``model``, ``opt`` (AdamW), ``gen`` (the batch
    order's generator), ``order`` and ``done``: everything that decides the next steps."""

    def snapshot(self) -> dict:
        return {
            "params": get_params(self.model),
            "opt": copy.deepcopy(self.opt.state_dict()),
            "gen": self.gen.get_state(),
            "order": list(self.order),
            "done": self.done,
        }

    def restore(self, snap: dict) -> None:
        set_params(self.model, snap["params"])
        self.opt.load_state_dict(copy.deepcopy(snap["opt"]))
        self.gen.set_state(snap["gen"])
        self.order, self.done = list(snap["order"]), snap["done"]


class Trainer(Resumable):
    """AdamW on the trainable parameters (trained scales at ``scale_lr``) with the
    in-batch-negatives loss; batches drawn without repeats inside an epoch (a repeated pair would be
    its own
    negative). ``run(n)`` trains ``n`` more steps; ``snapshot()`` / ``restore()`` keep and bring
    back everything that decides the next steps (the trainable tensors, AdamW's moments, the
    batch order), so a run stopped and resumed trains exactly as one that never stopped."""

    def __init__(
        self,
        model,
        tokenizer,
        pairs,
        *,
        batch: int,
        lr: float,
        seed: int,
        lengths: Lengths,
        label: str,
        scale_lr: float | None = None,
    ):
        self.model, self.tokenizer, self.pairs = model, tokenizer, pairs
        self.batch, self.lengths, self.label, self.lr = batch, lengths, label, lr
        self.gen = torch.Generator().manual_seed(seed)
        self.opt = adamw(model, lr, scale_lr)
        self.order: list[int] = []
        self.done = 0  # steps trained so far

    def _next_batch(self) -> list[int]:
        if len(self.order) < self.batch:  # a new epoch; the last one's few leftovers are dropped
            self.order = torch.randperm(len(self.pairs), generator=self.gen).tolist()
        idx, self.order = self.order[: self.batch], self.order[self.batch :]
        return idx

    def run(self, steps: int, on_step=None) -> list[float]:
        """Train ``steps`` more steps; the loss of each. ``on_step()`` after each."""
        self.model.eval()  # no dropout: every row trains the same deterministic function
        losses = []
        bar = training_bar(steps, self.label)
        for _ in bar:
            idx = self._next_batch()
            q = encode(
                self.model, self.tokenizer, [self.pairs[i].query for i in idx], self.lengths.query
            )
            d = encode(
                self.model, self.tokenizer, [self.pairs[i].doc for i in idx], self.lengths.doc
            )
            loss = contrastive_loss(q, d)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.done += 1
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
    return {
        "recall@1": (rank == 1).float().mean().item(),
        f"mrr@{k}": torch.where(rank <= k, 1.0 / rank, torch.zeros(())).mean().item(),
    }
