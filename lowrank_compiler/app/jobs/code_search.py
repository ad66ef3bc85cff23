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
from onnxruntime running its exported file. ``code_search_report`` writes the table and the figure.

The settings and options are in ``code_search_config``, the pairs' split in ``code_search_data``
(both re-exported here); this module builds, tunes and measures each row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...api import compile
from ...export import export_onnx
from ...policy import Policy
from ...runtime.serve.load import load
from ..pretrained import load_minilm, tokenize
from . import code_search_report as report
from .code_search_config import JobConfig, add_arguments, config_from_args
from .code_search_data import Data, load_data
from .code_search_methods import BY_KEY, Method
from .encoder import check_out_dir, latencies_ms, onnx_embed, torch_embed
from .memory import PeakRSS, frozen_bytes
from .retrieval import Trainer, get_params, rank_metrics, set_params

# the settings and the data live in their own modules; callers import them from here
__all__ = [
    "Context",
    "Data",
    "JobConfig",
    "add_arguments",
    "build",
    "choose_lr",
    "config_from_args",
    "context",
    "embed_onnx",
    "embed_torch",
    "latencies",
    "load_data",
    "measure",
    "metrics",
    "run",
    "trainer",
    "tune",
]


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


def context(cfg: JobConfig, data: Data, log) -> Context:
    """The tokenizer, two training documents as the example batch export traces with, and GPTQ's
    calibration batches (the first ``calibration_docs`` training documents)."""
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


def build(method: Method, job: Context):
    """A fresh pretrained MiniLM, compiled with the method's policy (as is for fp32)."""
    model, _ = load_minilm()
    if method.policy is None:
        return model
    # the adapters' random init: the same command gives the same table
    torch.manual_seed(job.cfg.seed)
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


def latencies(job: Context, rows: list[dict]) -> dict[int, dict[str, float]]:
    """Milliseconds by file at accuracy level 0 (every file) and 4 (the integer ones), one
    held-out document at a time."""
    cfg = job.cfg
    integer = {r["file"] for r in rows if r.get("int")}
    return {
        level: latencies_ms(
            {k: v for k, v in job.files.items() if not level or k in integer},
            job.tokenizer,
            job.data.eval[0].doc,
            level,
            rounds=cfg.latency_runs,
            runs=1,
            max_length=cfg.doc_tokens,
        )
        for level in (0, 4)
    }


def run(cfg: JobConfig, log=print) -> dict:
    """The job end to end: every method's rows, their latency, results.md (and recall.png)."""
    check_out_dir(Path(cfg.out))
    started = (time.perf_counter(), time.process_time())
    data = load_data(cfg)
    log(data.summary)
    job = context(cfg, data, log)
    rows = []
    for key in cfg.methods:
        rows += measure(BY_KEY[key], job)
    latency = latencies(job, rows)
    text = report.write(
        job, rows, latency, (time.perf_counter() - started[0], time.process_time() - started[1])
    )
    log(text)
    files = {k: str(v) for k, v in job.files.items()}
    return {"rows": rows, "latency": latency, "summary": data.summary, "files": files}
