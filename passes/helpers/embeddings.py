"""``quantize_embeddings``: store a model's vocabulary tables as INT4 (``IntEmbedding``).

In small models the vocabulary table is a large share of the weights (MiniLM: 45 of its
54 MiB once the linear layers are INT4). Each selected ``nn.Embedding`` is replaced by an
``IntEmbedding`` (4-bit codes, min-max per row and group, integer zero points), which the
exporters lower to ``com.microsoft::GatherBlockQuantized``.

Tied heads (``head.weight is table.weight``, or an HF model with ``tie_word_embeddings``)
keep one set of codes for both uses, as onnxruntime-genai's ``shared_embeddings`` does:

- a float head tied to the table becomes an ``IntLinear`` over the table's own codes (the
  head is INT4 afterwards: that is the price of holding the table once);
- a head that is already a 4-bit ``IntLinear`` with integer zero points of the table's
  shape lends its codes to the table (no second rounding);
- otherwise (float zero points, an adapter, another width) the table is rounded on its own.

The swap is in place; ``int4_embeddings`` does it for the length of a ``with`` block (the
exporters' ``embeddings="int4"``) and puts the float modules back afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from ...runtime.errors import ExportError
from ...runtime.layers.int_embedding import IntEmbedding
from ...runtime.quant.formats import EMBEDDINGS, QDQ_TABLE, check_choice, check_group_size
from .graph import module_aliases

FilterFn = Callable[[nn.Module, str], bool]


def check_embeddings(embeddings, group_size, fmt: str) -> None:
    """The exporters' ``embeddings`` / ``embedding_group_size`` options, as an ``ExportError``."""
    try:
        check_choice(embeddings, EMBEDDINGS, "embeddings")
        check_group_size(group_size, "embedding_group_size")
    except ValueError as e:
        raise ExportError(str(e)) from None
    if embeddings == "int4" and fmt == "qdq":
        raise ExportError(f"embeddings='int4' with format='qdq': {QDQ_TABLE}")


def _selected(model: nn.Module, filter_fn: FilterFn | None) -> list[str]:
    tables = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if filter_fn is not None:
        return [n for n, m in tables if filter_fn(m, n)]
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            table = getter()
        except Exception:  # some models raise NotImplementedError here
            table = None
        if isinstance(table, (nn.Embedding, IntEmbedding)):  # an IntEmbedding: quantized already
            return [n for n, m in tables if m is table][:1]
    if any(isinstance(m, IntEmbedding) for m in model.modules()):
        return []  # quantized already
    # the vocabulary table: the one with the most rows (positions and token types are small)
    return [max(tables, key=lambda t: t[1].num_embeddings)[0]] if tables else []


def _tied_heads(model: nn.Module, table: nn.Embedding) -> list[str]:
    """Modules other than ``table`` computing ``x @ table.weight^T``, float or already quantized."""
    heads = [
        n
        for n, m in model.named_modules()
        if m is not table
        and getattr(m, "weight", None) is table.weight
        and isinstance(m, nn.Linear)
    ]
    config = getattr(model, "config", None)
    getter = getattr(model, "get_output_embeddings", None)
    if not heads and getattr(config, "tie_word_embeddings", False) and callable(getter):
        head = getter()
        shape = (getattr(head, "out_features", None), getattr(head, "in_features", None))
        if callable(getattr(head, "table_codes", None)) and shape == tuple(table.weight.shape):
            heads = [n for n, m in model.named_modules() if m is head]  # a quantized head
    return heads


def _swap(model: nn.Module, name: str, new: nn.Module, journal: list) -> None:
    old = model.get_submodule(name)
    for alias in module_aliases(model, old):
        model.set_submodule(alias, new)
        journal.append((alias, old))


def quantize_embeddings(
    model: nn.Module,
    *,
    group_size: int = 32,
    filter_fn: FilterFn | None = None,
    _journal: list | None = None,
) -> dict[str, str]:
    """Replace the model's vocabulary table(s) by 4-bit ``IntEmbedding`` in place.

    filter_fn(module, fqn): which ``nn.Embedding`` modules to quantize; by default the
        model's ``get_input_embeddings()``, or, for a model without it, its ``nn.Embedding``
        with the most rows.
    Returns ``{table name: what was done}``. Raises ``ValueError`` naming the table when
    its width is not divisible by ``group_size`` (nothing is swapped then).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"quantize_embeddings expects a torch.nn.Module, got {type(model).__name__}"
        )
    names = _selected(model, filter_fn)
    if not names and any(isinstance(m, IntEmbedding) for m in model.modules()):
        return {}  # the tables are INT4 already
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no "
            f"nn.Embedding{' that filter_fn selects' if filter_fn else ''}"
            f" to quantize (tables already quantized are IntEmbedding)"
        )
    plan = []
    for name in names:
        table = model.get_submodule(name)
        heads = _tied_heads(model, table)
        head = model.get_submodule(heads[0]) if heads else None
        lent = IntEmbedding.lent_by(head) if head is not None else None
        if lent is not None:
            plan.append((name, lent, [], f"codes of {heads[0]}"))
            continue
        new = IntEmbedding.from_float(
            table, group_size=group_size, name=name
        )  # raises before any swap
        if isinstance(head, nn.Linear):
            bias = None if head.bias is None else head.bias.detach().to(torch.float32).clone()
            plan.append(
                (
                    name,
                    new,
                    [(h, new.tied_head(bias)) for h in heads],
                    f"INT4 g{group_size}, shared with {', '.join(heads)}",
                )
            )
        else:
            plan.append(
                (
                    name,
                    new,
                    [],
                    f"INT4 g{group_size}" + (f" (tied {heads[0]} not shareable)" if heads else ""),
                )
            )
    journal = [] if _journal is None else _journal
    for name, new, head_swaps, _ in plan:
        _swap(model, name, new, journal)
        for head_name, head in head_swaps:
            _swap(model, head_name, head, journal)
    return {name: how for name, _, _, how in plan}


@contextlib.contextmanager
def int4_embeddings(model: nn.Module, *, group_size: int = 32, enabled: bool = True):
    """``quantize_embeddings`` for the length of the block; the float modules come back after."""
    journal: list = []
    try:
        yield quantize_embeddings(model, group_size=group_size, _journal=journal) if enabled else {}
    finally:
        for alias, old in reversed(journal):
            model.set_submodule(alias, old)
