"""The code-search job: fine-tune MiniLM-L6 to find Python functions from a sentence, and
measure what each way to INT4 keeps of it.

Pairs (``code_pairs``): query = a docstring's first sentence, document = the function's
source without it, from installed modules (by default the standard-library lists of
``stdlib_modules``, split by module). Each tuned row trains the same steps at the same
rank with the same learning-rate search: every rate of ``lrs`` trains ``lr_steps`` steps
from the same start, the one with the best MRR@10 on ``val_pairs`` training pairs set aside
wins, and its run goes on to ``steps`` steps in all (in-batch-negatives contrastive loss,
``retrieval``): its first ``lr_steps`` steps are exactly those a fresh run at that rate would
train, so resuming saves them and changes nothing. Rows (``code_search_methods``) are
measured on every held-out query against every held-out document; a deployed row's embeddings come
from onnxruntime running
its exported file. ``code_search_report`` writes the table and the figure.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...api import compile
from ...export import export_onnx
from ...policy import Policy
from ...runtime.errors import PolicyError
from ...runtime.quant.formats import KERNEL_BITS
from ...runtime.serve.load import load
from ..pretrained import load_minilm, tokenize
from . import code_pairs, stdlib_modules
from . import code_search_report as report
from .code_search_methods import BY_KEY, DEFAULT, Method
from .encoder import (
    SCALE_LR,
    add_common_arguments,
    check_out_dir,
    latencies_ms,
    onnx_embed,
    torch_embed,
)
from .memory import PeakRSS, frozen_bytes
from .retrieval import Lengths, Trainer, get_params, rank_metrics, set_params

MIN_EVAL_PAIRS = 10  # MRR@10 needs ten documents to rank


@dataclass(frozen=True)
class JobConfig:
    bits: int = 4
    group_size: int = 32
    rank: int = 16
    alpha: float = 32.0
    steps: int = 50
    batch: int = 32
    lrs: tuple[float, ...] = (
        3e-4,
        1e-3,
        3e-3,
    )  # the learning-rate search, the same for every tuned row
    lr_steps: int = (
        10  # steps each rate trains before the choice (the winner's run goes on from there)
    )
    scale_lr: float | None = (
        SCALE_LR  # ours' trained scales (a relative step), as in the distillation job
    )
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
        if not self.lrs or any(
            isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1
            for r in self.lrs
        ):
            raise PolicyError(f"lrs must be one or more learning rates in (0, 1), got {self.lrs!r}")
        self._check_methods()

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


@dataclass
class Data:
    train: list
    val: list  # set aside from the training modules' pairs to choose the learning rate
    eval: list
    summary: str


@dataclass
class Context:
    """What every method's build and deployment needs."""

    cfg: JobConfig
    tokenizer: object
    example: tuple
    kwargs: dict
    calibration: list
    out: Path
    data: Data
    log: object = print
    files: dict = field(default_factory=dict)

    def policy(self, fields: dict) -> Policy:
        return self.cfg.policy(fields)


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
    val_n = cfg.val_pairs if len(cfg.lrs) > 1 else 0
    if len(train_pairs) < cfg.batch + val_n:
        raise code_pairs.DataError(
            f"{source} ({', '.join(train_modules[:6])}{', ...' if len(train_modules) > 6 else ''}) "
            "give "
            f"{len(train_pairs)} training pairs; the job needs at least {cfg.batch + val_n} (a "
            f"batch of {cfg.batch}"
            f"{f' and {val_n} to choose the learning rate' if val_n else ''}): name more or larger "
            "modules"
        )
    if cfg.eval_pairs:
        eval_pairs = eval_pairs[: cfg.eval_pairs]
    if len(eval_pairs) < MIN_EVAL_PAIRS:
        raise code_pairs.DataError(
            f"the held-out modules ({', '.join(eval_modules)}) give {len(eval_pairs)} pairs; the "
            "metrics need at "
            f"least {MIN_EVAL_PAIRS}: name more or larger held-out modules"
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
        "pairs "
        f"from {n_train} modules ({len(val)} of them set aside to choose the learning rate), "
        f"{len(eval_pairs)} held-out pairs from {n_eval} other modules"
        + (f"; {len(skipped)} modules gave no pair or did not import" if skipped else "")
    )
    return Data(train_pairs, val, eval_pairs, summary)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's options, shared by the command line and the example script."""
    cfg = JobConfig()
    add_common_arguments(
        parser,
        steps=cfg.steps,
        out=cfg.out,
        steps_help=f"training steps of {cfg.batch} pairs, for every tuned row",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        default=list(cfg.methods),
        help=f"rows to measure, of {', '.join(BY_KEY)} (default: {' '.join(cfg.methods)})",
    )
    parser.add_argument(
        "--lrs",
        nargs="+",
        type=float,
        default=list(cfg.lrs),
        metavar="LR",
        help=f"learning rates each tuned row tries ({cfg.lr_steps} steps each) before training",
    )
    parser.add_argument(
        "--doc-tokens", type=int, default=cfg.doc_tokens, help="tokens kept per document"
    )
    parser.add_argument(
        "--query-tokens", type=int, default=cfg.query_tokens, help="tokens kept per query"
    )
    parser.add_argument(
        "--eval-pairs", type=int, default=0, help="held-out pairs to measure (0: all)"
    )
    data = parser.add_argument_group(
        "data (default: the standard library's modules, split by module)"
    )
    data.add_argument("--train-modules", nargs="+", metavar="MODULE", help="modules to train on")
    data.add_argument(
        "--eval-modules", nargs="+", metavar="MODULE", help="held-out modules to measure on"
    )
    data.add_argument(
        "--package",
        metavar="NAME",
        help="every module of an installed package, split by module (every 8th held out)",
    )


def config_from_args(args: argparse.Namespace) -> JobConfig:
    if args.package and (args.train_modules or args.eval_modules):
        raise PolicyError(
            "--package takes the modules from the package: drop --train-modules / --eval-modules, "
            "or drop --package"
        )
    modules = {}
    if args.train_modules:
        modules["train_modules"] = tuple(args.train_modules)
    if args.eval_modules:
        modules["eval_modules"] = tuple(args.eval_modules)
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
        package=args.package,
        out=args.out,
        **modules,
    )


def build(method: Method, job: Context):
    """A fresh pretrained MiniLM, compiled with the method's policy (as is for fp32)."""
    model, _ = load_minilm()
    if method.policy is None:
        return model
    torch.manual_seed(
        job.cfg.seed
    )  # the adapters' random init: the same command gives the same table
    return compile(
        model,
        job.policy(method.policy),
        example_inputs=job.example,
        example_kwargs=job.kwargs,
        calibration=job.calibration if method.gptq else None,
    )


def trainer(model, method: Method, job: Context, lr: float) -> Trainer:
    cfg = job.cfg
    return Trainer(
        model,
        job.tokenizer,
        job.data.train,
        batch=cfg.batch,
        lr=lr,
        seed=cfg.seed,
        lengths=cfg.lengths,
        label=f"{method.key} lr {lr:g}",
        scale_lr=cfg.scale_lr,
    )


def choose_lr(model, method: Method, job: Context) -> tuple[Trainer, dict[float, float]]:
    """Every rate of the search (times the method's ``lr_scale``) trains ``lr_steps`` steps from the
    same start; the best MRR@10 on the set-aside training pairs wins. Returns the winner's
    trainer, resumed where its search run stopped (its first ``lr_steps`` steps are those a
    fresh run at that rate would train: the same start, batches and rate), and the scores."""
    cfg = job.cfg
    rates = [lr * method.lr_scale for lr in cfg.lrs]
    if len(rates) == 1:
        return trainer(model, method, job, rates[0]), {}
    start = get_params(model)
    scores, best = {}, None
    for lr in rates:
        run = trainer(model, method, job, lr)
        run.run(min(cfg.lr_steps, cfg.steps))  # never more than the row's budget
        scores[lr] = metrics(embed_torch(model, job, job.data.val))["mrr@10"]
        if best is None or scores[lr] > scores[best[0]]:
            best = (lr, run.snapshot())
        set_params(model, start)
    lr, snap = best
    run = trainer(model, method, job, lr)
    run.restore(snap)
    return run, scores


def tune(model, method: Method, job: Context) -> dict:
    cfg = job.cfg
    frozen = frozen_bytes(model)
    run, search = choose_lr(model, method, job)
    lr = run.lr
    searched = run.done
    started = time.perf_counter()
    with PeakRSS() as peak:
        run.run(cfg.steps - run.done)
    search_text = ", ".join(f"{r:g}: {s:.3f}" for r, s in search.items())
    job.log(
        f"{method.label}: lr {lr:g}"
        + (
            f" (MRR@10 on the set-aside pairs after {cfg.lr_steps} steps: "
            f"{search_text}; the winner's run goes on)"
            if search
            else ""
        )
        + f"; {run.done} steps, the last {run.done - searched} in "
        f"{time.perf_counter() - started:.0f} s"
    )
    return {
        "lr": lr,
        "search": search,
        "frozen_bytes": frozen,
        "peak_rss": peak.bytes,
        "rss_exact": peak.exact,
        "train_s": time.perf_counter() - started,
    }


def embed_torch(model, job: Context, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = job.cfg
    return (
        torch_embed(model, job.tokenizer, [p.query for p in pairs], max_length=cfg.query_tokens),
        torch_embed(model, job.tokenizer, [p.doc for p in pairs], max_length=cfg.doc_tokens),
    )


def embed_onnx(path: Path, job: Context, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    cfg, session = job.cfg, load(path)
    return (
        onnx_embed(session, job.tokenizer, [p.query for p in pairs], max_length=cfg.query_tokens),
        onnx_embed(session, job.tokenizer, [p.doc for p in pairs], max_length=cfg.doc_tokens),
    )


def metrics(embedded: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    return rank_metrics(*embedded)


def measure(method: Method, job: Context) -> list[dict]:
    """The method's rows: the trained PyTorch model (where it has such a row), then each
    deployment, exported and run by onnxruntime."""
    fmt = f"INT{job.cfg.bits} g{job.cfg.group_size}"
    model = build(method, job)
    trained = tune(model, method, job) if method.train else {}
    rows, in_torch = [], None
    if method.torch_row or any(d.exact for d in method.deploys):
        in_torch = embed_torch(model, job, job.data.eval)
    if method.torch_row:
        rows.append(
            {
                "label": method.torch_row.format(int=fmt),
                "engine": "PyTorch",
                **metrics(in_torch),
                **trained,
            }
        )
    for i, deploy in enumerate(method.deploys):
        name = f"{method.key}-{i}" if len(method.deploys) > 1 else method.key
        path = export_onnx(
            deploy.build(model, job),
            job.out / f"{name}.onnx",
            example_inputs=job.example,
            example_kwargs=job.kwargs,
        )
        job.files[name] = path
        in_onnx = embed_onnx(path, job, job.data.eval)
        row = {
            "label": deploy.label.format(int=fmt),
            "engine": "onnxruntime",
            "file": name,
            "exact": deploy.exact,
            "int": deploy.integer,
            "size": path.stat().st_size,
            **metrics(in_onnx),
            **trained,
        }
        if deploy.exact:
            row["onnx_vs_torch"] = [(a * b).sum(-1).min().item() for a, b in zip(in_onnx, in_torch)]
        rows.append(row)
        job.log(f"{row['label']}: recall@1 {row['recall@1']:.3f}, MRR@10 {row['mrr@10']:.3f}")
    return rows


def context(cfg: JobConfig, data: Data, log) -> Context:
    _, tokenizer = load_minilm()
    t = tokenize(tokenizer, [data.train[0].doc, data.train[1].doc], max_length=cfg.doc_tokens)
    docs = [p.doc for p in data.train[: cfg.calibration_docs]]
    calibration = [
        dict(tokenize(tokenizer, docs[i : i + 32], max_length=cfg.doc_tokens))
        for i in range(0, len(docs), 32)
    ]
    return Context(
        cfg,
        tokenizer,
        (t["input_ids"],),
        {"attention_mask": t["attention_mask"]},
        calibration,
        Path(cfg.out),
        data,
        log,
    )


def run(cfg: JobConfig, log=print) -> dict:
    check_out_dir(Path(cfg.out))
    started = (time.perf_counter(), time.process_time())
    data = load_data(cfg)
    log(data.summary)
    job = context(cfg, data, log)
    rows = []
    for key in cfg.methods:
        rows += measure(BY_KEY[key], job)
    integer = {r["file"] for r in rows if r.get("int")}
    latency = {
        level: latencies_ms(
            {k: v for k, v in job.files.items() if not level or k in integer},
            job.tokenizer,
            data.eval[0].doc,
            level,
            rounds=cfg.latency_runs,
            runs=1,
            max_length=cfg.doc_tokens,
        )
        for level in (0, 4)
    }
    text = report.write(
        job, rows, latency, (time.perf_counter() - started[0], time.process_time() - started[1])
    )
    log(text)
    files = {k: str(v) for k, v in job.files.items()}
    return {"rows": rows, "latency": latency, "summary": data.summary, "files": files}
