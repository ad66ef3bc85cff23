"""The code-search job's settings (``code_search``): ``JobConfig``, checked as it is made, and
the command-line options that fill it (``lowrank-compiler demo code-search``).

Apart from the run so that the settings, their defaults and their checks read in one place;
``code_search`` re-exports the names, which is where callers import them from.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ...policy import Policy
from ...runtime.errors import PolicyError
from ...runtime.quant.formats import KERNEL_BITS
from . import stdlib_modules
from .code_search_methods import BY_KEY, DEFAULT
from .encoder import SCALE_LR, add_common_arguments, add_row_arguments
from .retrieval import Lengths


@dataclass(frozen=True)
class JobConfig:
    bits: int = 4
    group_size: int = 32
    rank: int = 16
    alpha: float = 32.0
    steps: int = 50
    batch: int = 32
    # the learning-rate search, the same for every tuned row
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    # steps each rate trains before the choice (the winner's run goes on from there)
    lr_steps: int = 10
    # ours' trained scales (a relative step), as in the distillation job
    scale_lr: float | None = SCALE_LR
    val_pairs: int = 128  # training pairs set aside to choose the rate
    query_tokens: int = 32
    doc_tokens: int = 64
    train_modules: tuple[str, ...] = stdlib_modules.TRAIN
    eval_modules: tuple[str, ...] = stdlib_modules.HELD_OUT
    package: str | None = None  # all modules of an installed package instead, split by module
    eval_pairs: int = 0  # 0: every held-out pair
    calibration_docs: int = 256  # GPTQ's statistics: training documents
    methods: tuple[str, ...] = DEFAULT
    latency_runs: int = 30
    seed: int = 0
    out: str = "out/code-search"

    def __post_init__(self):
        """Bad settings fail here, before the model loads or any file is written."""
        self.policy({"method": "qalora"})  # bits, group_size, rank, alpha: the policy's own checks
        if self.bits not in KERNEL_BITS:
            raise PolicyError(
                f"bits must be one of {KERNEL_BITS} for the job: {self.bits}-bit weights have no "
                f"onnxruntime kernel"
            )
        self._check_counts()
        if not self.lrs or any(
            isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1
            for r in self.lrs
        ):
            raise PolicyError(f"lrs must be one or more learning rates in (0, 1), got {self.lrs!r}")
        self._check_methods()

    def _check_counts(self) -> None:
        for name, low in (
            ("steps", 0),
            ("batch", 2),
            ("lr_steps", 1),
            ("val_pairs", 2),
            ("query_tokens", 4),
            ("doc_tokens", 8),
            ("eval_pairs", 0),
            ("calibration_docs", 1),
            ("latency_runs", 1),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PolicyError(f"{name} must be an integer >= {low}, got {value!r}")

    def _check_methods(self) -> None:
        for key in self.methods:
            if key not in BY_KEY:
                raise PolicyError(f"unknown method {key!r}; the methods are {', '.join(BY_KEY)}")

    def policy(self, fields: dict) -> Policy:
        return Policy(
            bits=self.bits, group_size=self.group_size, rank=self.rank, alpha=self.alpha, **fields
        )

    @property
    def lengths(self) -> Lengths:
        return Lengths(self.query_tokens, self.doc_tokens)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's options, shared by the command line and the example script."""
    cfg = JobConfig()
    add_common_arguments(
        parser,
        steps=cfg.steps,
        out=cfg.out,
        steps_help=f"training steps of {cfg.batch} pairs, for every tuned row",
    )
    add_row_arguments(parser, cfg.methods, cfg.lrs, BY_KEY, cfg.lr_steps, " ".join(cfg.methods))
    parser.add_argument(
        "--doc-tokens", type=int, default=cfg.doc_tokens, help="tokens kept per document"
    )
    parser.add_argument(
        "--query-tokens", type=int, default=cfg.query_tokens, help="tokens kept per query"
    )
    parser.add_argument(
        "--eval-pairs", type=int, default=0, help="held-out pairs to measure (0: all)"
    )
    stdlib_modules.add_module_arguments(parser)


def config_from_args(args: argparse.Namespace) -> JobConfig:
    return JobConfig(
        bits=args.bits,
        group_size=args.group_size,
        rank=args.rank,
        alpha=2.0 * args.rank,
        steps=args.steps,
        methods=tuple(dict.fromkeys(args.methods)),
        lrs=tuple(args.lrs),
        doc_tokens=args.doc_tokens,
        query_tokens=args.query_tokens,
        eval_pairs=args.eval_pairs,
        out=args.out,
        **stdlib_modules.module_fields(args),
    )
