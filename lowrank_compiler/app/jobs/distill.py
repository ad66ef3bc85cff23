"""The distillation job: a real pretrained sentence encoder (MiniLM-L6) to pure INT4 ONNX, measured.

compile (QA-LoRA, INT-``bits`` in groups of ``group_size``, every linear layer, the
base rounded by GPTQ on ``calibration_sentences`` training sentences) -> distil the
adapters toward the fp32 model's hidden states on unlabeled text -> fold (split zero
points) -> export ONNX -> run with onnxruntime -> one table against fp32, RTN (no
training), GPTQ (no training), onnxruntime's own INT4 quantizer and the QLoRA way (NF4 +
LoRA trained on the same budget, then merged and requantized), by mean and worst cosine
similarity to the fp32 sentence embeddings on held-out sentences, file size and latency
at batch 1 (onnxruntime, one thread, accuracy level 0 for every file).

``methods`` picks what is trained this way, each from the same base, batches and budget:
``"qalora"`` (folded ``split``) and ``"lrqat"`` (the default: adapters inside the rounding,
folded into integer codes, no correction; in the README's side-by-side run at least as good as
QA-LoRA in mean and worst cosine), the latter at its own learning rate ``lrqat_lr``: its
adapter moves weights in grid units, a step of ``s`` each, so ``lr`` means something else
there. With ``train_scales`` (the default) both also train each group's scale (a log factor,
at ``scale_lr`` for 4-bit layers, ``encoder.scale_rate`` for other widths); the fold stays
exact. The first method is the one the summary lines measure.

The model is ``pretrained.load_minilm``; the text is ``lowrank_compiler.app.data``.
``lowrank-compiler demo`` and ``examples/minilm_qalora.py`` run it with the options of
``add_arguments``. The settings and options are in ``distill_config`` (re-exported here), the
table's wording in ``distill_report``; this module is the run, one function per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from ... import quantize_embeddings
from ...adapters import save_adapters
from ...api import compile, fold
from ...export import export_onnx
from ...runtime.serve.load import load
from .. import data
from ..pretrained import load_minilm, tokenize
from . import distill_report as report
from .distill_config import JOB_METHODS, LABELS, JobConfig, add_arguments, config_from_args
from .encoder import (
    check_out_dir,
    cosines,
    distil,
    latencies_ms,
    onnx_embed,
    ort_quantize,
    torch_embed,
)

# the settings live in distill_config; callers import them from here, beside the run
__all__ = [
    "JOB_METHODS",
    "LABELS",
    "Job",
    "JobConfig",
    "Trained",
    "add_arguments",
    "baselines",
    "config_from_args",
    "export",
    "latencies",
    "measure_file",
    "prepare",
    "run",
    "student",
    "train_ours",
]


@dataclass
class Job:
    """What every step of the run shares: the settings, the teacher and its text, the example
    batch export traces with, GPTQ's calibration batches, and the files written so far."""

    cfg: JobConfig
    out: Path
    teacher: torch.nn.Module
    tokenizer: object
    train_text: list[str]
    eval_text: list[str]  # the held-out sentences every row is measured on
    cal_text: list[str]  # the training sentences GPTQ's statistics come from
    example: tuple
    kwargs: dict
    calibration: list
    ref: torch.Tensor  # the fp32 model's held-out embeddings in PyTorch: every row's reference
    files: dict[str, Path] = field(default_factory=dict)  # ONNX files by name, in writing order


class Trained(NamedTuple):
    """A method the job trained: its file's held-out embeddings (by onnxruntime), their cosine
    to the trained PyTorch model's (mean, worst), the distillation losses, seconds to train."""

    emb: torch.Tensor
    onnx_vs_torch: tuple[float, float]
    losses: list
    seconds: float


def prepare(cfg: JobConfig, log) -> Job:
    """The teacher, the text split and cut to the settings, and the fp32 reference embeddings."""
    out = Path(cfg.out)
    check_out_dir(out)
    teacher, tokenizer = load_minilm()
    train_text, eval_text = data.split()
    eval_text = eval_text[: cfg.eval_sentences]
    log(
        f"MiniLM-L6: {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M parameters; "
        f"{len(train_text)} training and {len(eval_text)} held-out sentences"
    )
    t = tokenize(tokenizer, train_text[:2])
    ref = torch_embed(teacher, tokenizer, eval_text)
    cal_text = train_text[: cfg.calibration_sentences]
    calibration = [
        dict(tokenize(tokenizer, cal_text[i : i + 32])) for i in range(0, len(cal_text), 32)
    ]
    return Job(
        cfg,
        out,
        teacher,
        tokenizer,
        train_text,
        eval_text,
        cal_text,
        (t["input_ids"],),
        {"attention_mask": t["attention_mask"]},
        calibration,
        ref,
    )


def student(job: Job, method: str, quantizer: str = "rtn", dumps: Path | None = None):
    """A fresh pretrained MiniLM compiled with ``method``'s policy, its base rounded by
    ``quantizer`` (GPTQ: on the calibration batches)."""
    model, _ = load_minilm()
    # the adapters' random init: the same command gives the same table
    torch.manual_seed(job.cfg.seed)
    return compile(
        model,
        job.cfg.policy(method, quantizer),
        example_inputs=job.example,
        example_kwargs=job.kwargs,
        calibration=job.calibration if quantizer == "gptq" else None,
        dump_dir=dumps,
    )


def export(job: Job, model, name: str) -> Path:
    """``model`` as ``out/<name>.onnx``, the vocabulary table as the settings say (fp32: as is)."""
    cfg = job.cfg
    tables = {"embeddings": cfg.embeddings, "embedding_group_size": cfg.embedding_group_size}
    job.files[name] = export_onnx(
        model,
        job.out / f"{name}.onnx",
        example_inputs=job.example,
        example_kwargs=job.kwargs,
        **(tables if name != "fp32" else {}),
    )
    return job.files[name]


def measure_file(job: Job, name: str) -> tuple[float, float]:
    """Mean and worst cosine of the file's held-out embeddings (by onnxruntime) to fp32's."""
    return cosines(onnx_embed(load(job.files[name]), job.tokenizer, job.eval_text), job.ref)


def train_ours(job: Job, method: str, suffix: str) -> Trained:
    """Compile, distil, fold, export, save the adapters (dumps and adapters in folders named
    with ``suffix``)."""
    cfg = job.cfg
    started = time.perf_counter()
    model = student(job, method, cfg.quantizer, dumps=job.out / f"dumps{suffix}")
    teacher, tokenizer = job.teacher, job.tokenizer
    losses = distil(
        model, teacher, tokenizer, job.train_text, label=LABELS[method], **cfg.training(method)
    )
    seconds = time.perf_counter() - started
    # the table as the file holds it, so ONNX vs PyTorch compares one model
    if cfg.embeddings == "int4":
        quantize_embeddings(model, group_size=cfg.embedding_group_size)
    trained_emb = torch_embed(model, tokenizer, job.eval_text)
    export(job, fold(model, zeros="split", dump_dir=job.out / f"dumps{suffix}"), f"{method}_int4")
    save_adapters(model, job.out / f"adapters{suffix}")
    emb = onnx_embed(load(job.files[f"{method}_int4"]), tokenizer, job.eval_text)
    return Trained(emb, cosines(emb, trained_emb), losses, seconds)


def baselines(job: Job) -> dict[str, tuple[float, float]]:
    """The rows to beat, by label: RTN and GPTQ with no training, onnxruntime's own quantizer
    on the fp32 file, and QLoRA (NF4 + LoRA distilled on the same budget, merged, requantized)."""
    cfg = job.cfg
    rows = {}
    export(job, student(job, "rtn"), "rtn_int4")
    rows[report.RTN] = measure_file(job, "rtn_int4")
    if cfg.quantizer == "gptq":
        export(job, student(job, "rtn", quantizer="gptq"), "gptq_int4")
        rows[report.GPTQ] = measure_file(job, "gptq_int4")
    job.files["ort_int4"] = ort_quantize(
        job.files["fp32"], job.out / "ort_int4.onnx", bits=cfg.bits, group_size=cfg.group_size
    )
    rows[report.ORT] = measure_file(job, "ort_int4")
    qlora = student(job, "qlora")
    distil(qlora, job.teacher, job.tokenizer, job.train_text, label="QLoRA", **cfg.training())
    export(job, fold(qlora), "qlora_merged_int4")
    rows[report.QLORA] = measure_file(job, "qlora_merged_int4")
    return rows


def latencies(job: Job, paths: dict[str, Path]) -> tuple[dict, dict]:
    """Milliseconds by row at accuracy level 0, and at 4 for the INT files (not fp32)."""
    sentence = job.eval_text[0]
    acc0 = latencies_ms(paths, job.tokenizer, sentence, 0)
    acc4 = latencies_ms({k: v for k, v in paths.items() if k != "fp32"}, job.tokenizer, sentence, 4)
    return acc0, acc4


def run(cfg: JobConfig, log=print) -> dict:
    """The job end to end: the fp32 file, each method trained and its file, the baselines,
    results.md. Returns the rows, the first method's parity and losses, the files, and each
    method's parity, losses and training seconds."""
    job = prepare(cfg, log)
    export(job, job.teacher, "fp32")
    trained = {m: train_ours(job, m, "" if i == 0 else f"-{m}") for i, m in enumerate(cfg.methods)}
    rows = {report.FP32: measure_file(job, "fp32")}
    if cfg.baselines:
        rows.update(baselines(job))
    names = dict(report.FILES)  # row label -> file name; ours added below
    for method, t in trained.items():
        label = report.ours_label(cfg, method)
        rows[label] = cosines(t.emb, job.ref)
        names[label] = f"{method}_int4"
    paths = {label: job.files[names[label]] for label in rows}
    text = report.write(job, rows, paths, latencies(job, paths), trained)
    log(text)
    first = trained[cfg.methods[0]]
    return {
        "rows": rows,
        "onnx_vs_torch": first.onnx_vs_torch,
        "losses": first.losses,
        "files": {k: str(v) for k, v in job.files.items()},
        "methods": {
            m: {"onnx_vs_torch": t.onnx_vs_torch, "losses": t.losses, "train_s": t.seconds}
            for m, t in trained.items()
        },
    }
