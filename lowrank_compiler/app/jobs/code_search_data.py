"""The code-search job's pairs (``code_search``), split three ways: training pairs, the
training pairs set aside to choose the learning rate, and held-out pairs from other modules.

``code_pairs`` builds the pairs from modules; this module picks the modules the settings name,
checks there are enough pairs for a batch and for the metrics, sets the validation pairs aside
(a seeded draw) and says in words what it got.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

from . import code_pairs
from .code_search_config import JobConfig

MIN_EVAL_PAIRS = 10  # MRR@10 needs ten documents to rank


@dataclass
class Data:
    train: list
    val: list  # set aside from the training modules' pairs to choose the learning rate
    eval: list
    summary: str


def load_data(cfg: JobConfig) -> Data:
    """The pairs, split by module; the counts in words. Too few pairs is an error that says
    which modules gave them and what would work."""
    if cfg.package:
        train_modules, eval_modules = code_pairs.package_split(cfg.package)
    else:
        train_modules, eval_modules = list(cfg.train_modules), list(cfg.eval_modules)
    train_pairs, eval_pairs, skipped = code_pairs.build(
        train_modules, eval_modules, strict=not cfg.package
    )
    source = f"package {cfg.package!r}" if cfg.package else "the training modules"
    # no search (one rate): nothing to set aside
    val_n = cfg.val_pairs if len(cfg.lrs) > 1 else 0
    if len(train_pairs) < cfg.batch + val_n:
        raise code_pairs.DataError(
            f"{source} ({', '.join(train_modules[:6])}{', ...' if len(train_modules) > 6 else ''}) "
            f"give {len(train_pairs)} training pairs; the job needs at least {cfg.batch + val_n} "
            f"(a batch of {cfg.batch}"
            f"{f' and {val_n} to choose the learning rate' if val_n else ''}): name more or larger "
            "modules"
        )
    if cfg.eval_pairs:
        eval_pairs = eval_pairs[: cfg.eval_pairs]
    if len(eval_pairs) < MIN_EVAL_PAIRS:
        raise code_pairs.DataError(
            f"the held-out modules ({', '.join(eval_modules)}) give {len(eval_pairs)} pairs; the "
            f"metrics need at least {MIN_EVAL_PAIRS}: name more or larger held-out modules"
        )
    order = torch.randperm(
        len(train_pairs), generator=torch.Generator().manual_seed(cfg.seed)
    ).tolist()
    val = [train_pairs[i] for i in order[:val_n]]
    train_pairs = [train_pairs[i] for i in sorted(order[val_n:])]
    n_train, n_eval = (
        len([m for m in mods if m not in skipped]) for mods in (train_modules, eval_modules)
    )
    summary = (
        f"code pairs (Python {platform.python_version()}): {len(train_pairs) + len(val)} training "
        f"pairs from {n_train} modules ({len(val)} of them set aside to choose the learning "
        f"rate), {len(eval_pairs)} held-out pairs from {n_eval} other modules"
        + (f"; {len(skipped)} modules gave no pair or did not import" if skipped else "")
    )
    return Data(train_pairs, val, eval_pairs, summary)
