"""The distillation job's settings (``distill``): ``JobConfig``, checked as it is made, and the
command-line options that fill it (``lowrank-compiler demo``, ``examples/minilm_qalora.py``).

Apart from the run so that the settings, their defaults and their checks read in one place;
``distill`` re-exports the names, which is where callers import them from.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ...policy import Policy
from ...runtime.errors import PolicyError
from ...runtime.quant.formats import (
    EMBEDDINGS,
    KERNEL_BITS,
    QUANTIZERS,
    check_choice,
    check_group_size,
)
from .. import data
from .encoder import SCALE_LR, add_common_arguments

JOB_METHODS = ("qalora", "lrqat")  # what the job trains
LABELS = {"qalora": "QA-LoRA", "lrqat": "LR-QAT"}


@dataclass(frozen=True)
class JobConfig:
    bits: int = 4
    group_size: int = 32
    rank: int = 16
    alpha: float = 32.0
    steps: int = 300
    batch: int = 16
    lr: float = 5e-3
    # LR-QAT's adapter is in grid units; the best of 1e-1 ... 3e-4 over GPTQ (README)
    lrqat_lr: float = 3e-4
    # QA-LoRA and LR-QAT also train each group's scale (README: better for both)
    train_scales: bool = True
    # the scales' learning rate (a relative step); None: the method's
    scale_lr: float | None = SCALE_LR
    # LR-QAT: at least QA-LoRA's mean and worst, with no correction node (README)
    methods: tuple[str, ...] = ("lrqat",)
    eval_sentences: int = 256
    quantizer: str = "gptq"  # how the base is rounded: "gptq" (QA-LoRA's own start) or "rtn"
    calibration_sentences: int = 512  # GPTQ's statistics, from the training text
    seed: int = 0
    out: str = "out/minilm"
    baselines: bool = True  # RTN, onnxruntime's quantizer, QLoRA
    # the vocabulary table (45 of the 54 MiB left after INT4 linears) as GatherBlockQuantized: at
    # g16 the held-out cosines move by less than 0.001 (g32 costs the worst sentence ~0.003)
    embeddings: str = "int4"
    embedding_group_size: int = 16

    def __post_init__(self):
        """Bad settings fail here, before the model loads or any file is written."""
        # bits, group_size, rank, alpha, quantizer: the policy's own checks
        self.policy("qalora", self.quantizer)
        if self.bits not in KERNEL_BITS:
            raise PolicyError(
                f"bits must be one of {KERNEL_BITS} for the job: {self.bits}-bit weights have no "
                f"onnxruntime kernel"
            )
        self._check_counts()
        check_choice(self.embeddings, EMBEDDINGS, "embeddings")
        check_group_size(self.embedding_group_size, "embedding_group_size")
        if not isinstance(self.train_scales, bool):
            raise PolicyError(f"train_scales must be true or false, got {self.train_scales!r}")
        self._check_rates()
        object.__setattr__(self, "methods", self._checked_methods())

    def _check_counts(self) -> None:
        """Steps, batch, sentence counts (within the text there is) and the seed."""
        held_out = len(data.split()[1])
        limits = (
            ("steps", 0, None, ""),
            ("batch", 1, None, ""),
            ("eval_sentences", 1, held_out, "held-out"),
            ("calibration_sentences", 1, len(data.split()[0]), "training"),
            ("seed", 0, None, ""),
        )
        for name, low, high, text in limits:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < low
                or (high and value > high)
            ):
                span = f">= {low}" if high is None else f"in [{low}, {high}] (the {text} sentences)"
                raise PolicyError(f"{name} must be an integer {span}, got {value!r}")

    def _check_rates(self) -> None:
        for name in ("lr", "lrqat_lr") + (("scale_lr",) if self.scale_lr is not None else ()):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value < float("inf")
            ):
                raise PolicyError(f"{name} must be a positive finite number, got {value!r}")

    def _checked_methods(self) -> tuple[str, ...]:
        """``methods`` as a tuple (a list is accepted too), each a distinct name of JOB_METHODS."""
        methods = tuple(self.methods) if isinstance(self.methods, (list, tuple)) else self.methods
        if (
            not isinstance(methods, tuple)
            or not methods
            or any(m not in JOB_METHODS for m in methods)
            or len(set(methods)) != len(methods)
        ):
            raise PolicyError(
                f"methods must be distinct names from {JOB_METHODS}, e.g. 'qalora,lrqat'; "
                f"got {self.methods!r}"
            )
        return methods

    def training(self, method: str = "qalora") -> dict:
        """The distillation loop's settings (``encoder.distil``) for ``method``."""
        lr = self.lrqat_lr if method == "lrqat" else self.lr
        return {
            "steps": self.steps,
            "batch": self.batch,
            "lr": lr,
            "seed": self.seed,
            "scale_lr": self.scale_lr,
        }

    def policy(self, method: str, quantizer: str = "rtn") -> Policy:
        scales = {"train_scales": True} if method in JOB_METHODS and self.train_scales else {}
        return Policy(
            method=method,
            bits=self.bits,
            group_size=self.group_size,
            rank=self.rank,
            alpha=self.alpha,
            quantizer=quantizer,
            **scales,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's options, shared by the command line and the example script."""
    add_common_arguments(
        parser, steps=300, steps_help="training steps of 16 sentences", out="out/minilm"
    )
    parser.add_argument("--eval-sentences", type=int, default=256)
    parser.add_argument(
        "--calibration-sentences", type=int, default=512, help="GPTQ's statistics (training text)"
    )
    parser.add_argument(
        "--quantizer",
        choices=QUANTIZERS,
        default="gptq",
        help="how the INT base is rounded before training (gptq: calibrated on training text)",
    )
    parser.add_argument(
        "--embeddings",
        choices=EMBEDDINGS,
        default="int4",
        help="the INT models' vocabulary table: int4 (GatherBlockQuantized, default) or float",
    )
    parser.add_argument("--embedding-group-size", type=int, choices=(16, 32, 64, 128), default=16)
    parser.add_argument(
        "--methods",
        type=_methods,
        default=("lrqat",),
        help="what to train, comma-separated: lrqat (the default), qalora, or both: "
        "'lrqat,qalora' (same base, batches and budget; the first is the headline)",
    )
    parser.add_argument(
        "--train-scales",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="QA-LoRA and LR-QAT also train each group's scale (default: on; the fold stays exact)",
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip RTN, onnxruntime's quantizer and QLoRA"
    )


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(","))
    if not all(m in JOB_METHODS for m in methods) or len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give distinct names from {', '.join(JOB_METHODS)}, comma-separated"
        )
    return methods


def config_from_args(args: argparse.Namespace) -> JobConfig:
    return JobConfig(
        bits=args.bits,
        group_size=args.group_size,
        rank=args.rank,
        alpha=2.0 * args.rank,
        steps=args.steps,
        eval_sentences=args.eval_sentences,
        out=args.out,
        calibration_sentences=args.calibration_sentences,
        quantizer=args.quantizer,
        methods=args.methods,
        baselines=not args.no_baselines,
        embeddings=args.embeddings,
        embedding_group_size=args.embedding_group_size,
        train_scales=args.train_scales,
    )
