"""The LLM job's settings (``llm``): ``JobConfig``, checked as it is made, the command-line options
that fill it (``lowrank-compiler demo llm``) and the model it loads.

The model is stories260K (vendored) unless ``--model`` names an HF causal-LM directory with
tokenizer files (Llama, Mistral, Qwen2, Phi-3, GPT-2 ...), loaded offline in float32 from
safetensors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...policy import Policy
from ...runtime.errors import PolicyError
from ...runtime.quant.formats import KERNEL_BITS
from ..pretrained import stories260k_path
from . import stdlib_modules
from .code_pairs import DataError
from .encoder import add_common_arguments, add_row_arguments
from .llm_methods import BY_KEY, DEFAULT

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class JobConfig:
    model: str | None = None  # an HF causal-LM directory; None: stories260K
    bits: int = 4
    group_size: int = 16  # stories260K is 64 wide: QA-LoRA's pooled input has 4 inputs at g16
    rank: int = 8
    alpha: float = 16.0
    steps: int = 200
    batch: int = 16
    seq: int = 128
    lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    lr_steps: int = 30  # steps each rate trains before the choice; the winner goes on
    scale_lr: float = 1e-2  # trained scales' rate (per 4-bit layer; docs/llm.md: the search)
    val_windows: int = 32
    eval_windows: int = 128
    prompt_tokens: int = 48
    new_tokens: int = 32  # the report's continuations and the token check
    calibration_windows: int = 64  # GPTQ's statistics: training windows
    train_modules: tuple[str, ...] = stdlib_modules.TRAIN
    eval_modules: tuple[str, ...] = stdlib_modules.HELD_OUT
    package: str | None = None
    methods: tuple[str, ...] = DEFAULT
    latency_rounds: int = 30
    decode_tokens: int = 128  # tokens per decode-speed round
    seed: int = 0
    out: str = "out/llm"

    def __post_init__(self):
        """Bad settings fail here, before the model loads or any file is written."""
        self.policy({"method": "qalora"})  # bits, group_size, rank, alpha: the policy's own checks
        if self.bits not in KERNEL_BITS:
            raise PolicyError(
                f"bits must be one of {KERNEL_BITS} for the job: {self.bits}-bit weights have no "
                "onnxruntime kernel"
            )
        for name, low in (
            ("steps", 1),
            ("batch", 1),
            ("seq", 8),
            ("lr_steps", 1),
            ("val_windows", 1),
            ("eval_windows", 2),
            ("prompt_tokens", 1),
            ("new_tokens", 1),
            ("calibration_windows", 1),
            ("latency_rounds", 1),
            ("decode_tokens", 2),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PolicyError(f"{name} must be an integer >= {low}, got {value!r}")
        if not self.lrs or any(
            isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1
            for r in self.lrs
        ):
            raise PolicyError(f"lrs must be one or more learning rates in (0, 1), got {self.lrs!r}")
        if isinstance(self.scale_lr, bool) or not (
            isinstance(self.scale_lr, (int, float)) and 0 < self.scale_lr < 1
        ):
            raise PolicyError(f"scale_lr must be a learning rate in (0, 1), got {self.scale_lr!r}")
        for key in self.methods:
            if key not in BY_KEY:
                raise PolicyError(f"unknown method {key!r}; the methods are {', '.join(BY_KEY)}")
        if self.model is not None:
            check_model_dir(Path(self.model))

    def policy(self, fields: dict) -> Policy:
        return Policy(
            bits=self.bits, group_size=self.group_size, rank=self.rank, alpha=self.alpha, **fields
        )

    @property
    def model_dir(self) -> Path:
        return Path(self.model) if self.model else stories260k_path()


def check_model_dir(path: Path) -> None:
    """An HF causal LM's directory with tokenizer files, or a ``DataError`` saying what is off."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"--model {str(path)!r}: cannot read its config.json ({e})") from None
    names = config.get("architectures") or []
    if not any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        raise DataError(
            f"--model {str(path)!r} is {', '.join(names) or 'no named architecture'}, not a causal "
            "LM: the job needs a model that generates (e.g. LlamaForCausalLM, GPT2LMHeadModel)"
        )
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise DataError(
            f"--model {str(path)!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): save "
            "the tokenizer beside the model (tokenizer.save_pretrained(DIR))"
        )


def load_tokenizer(cfg: JobConfig):
    """The model directory's tokenizer, with a pad token, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(cfg.model_dir), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def hf_quiet():
    """transformers without its warnings and progress bars (loading, writing shards), as before
    afterwards: the job prints its own progress."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def load_model(cfg: JobConfig):
    """The model in float32, eval mode, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    with hf_quiet():
        model = AutoModelForCausalLM.from_pretrained(
            str(cfg.model_dir), use_safetensors=True, local_files_only=True
        )
    return model.float().eval()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's options, shared by the command line and the example script."""
    cfg = JobConfig()
    parser.add_argument(
        "--model",
        metavar="DIR",
        help="an HF causal-LM directory with tokenizer files (default: the vendored stories260K)",
    )
    add_common_arguments(
        parser,
        steps=cfg.steps,
        steps_help=f"training steps of {cfg.batch} windows",
        out=cfg.out,
        group_size=cfg.group_size,
        rank=cfg.rank,
    )
    parser.add_argument("--seed", type=int, default=cfg.seed)
    add_row_arguments(parser, cfg.methods, cfg.lrs, BY_KEY, cfg.lr_steps, "all")
    parser.add_argument(
        "--eval-windows",
        type=int,
        default=cfg.eval_windows,
        help=f"held-out windows of {cfg.seq} tokens to measure perplexity on",
    )
    stdlib_modules.add_module_arguments(parser)


def config_from_args(args: argparse.Namespace) -> JobConfig:
    return JobConfig(
        model=args.model,
        bits=args.bits,
        group_size=args.group_size,
        rank=args.rank,
        alpha=2.0 * args.rank,
        steps=args.steps,
        methods=tuple(dict.fromkeys(args.methods)),
        lrs=tuple(args.lrs),
        eval_windows=args.eval_windows,
        seed=args.seed,
        out=args.out,
        **stdlib_modules.module_fields(args),
    )
