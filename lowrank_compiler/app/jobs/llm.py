"""The LLM job: adapt a pretrained decoder (stories260K, or any HF causal LM) to a new domain,
the docstrings and comments of Python modules, and deploy it in INT4 to onnxruntime-genai by
every route the peers offer and by ours, measuring what each keeps and costs.

Each trained row (``llm_methods``) trains the same steps at the same rank with the same
learning-rate search: every rate of ``lrs`` trains ``lr_steps`` steps from the same start, the
lowest perplexity on windows set aside from the training modules wins, and its run goes on to
``steps`` steps in all (its first ``lr_steps`` steps are those a fresh run at that rate would
train). Every row's perplexity is measured on the same held-out windows, a deployed row's from
its folder's own logits through onnxruntime (``llm_eval``); decode speed in onnxruntime-genai.
``llm_report`` writes the table, ``results.json`` and the figure.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from ...adapters import save_adapters
from ...api import compile, fold
from . import llm_eval as E
from . import llm_report as report
from .encoder import check_out_dir
from .llm_config import JobConfig, add_arguments, config_from_args, load_model, load_tokenizer
from .llm_data import Data, load_data
from .llm_deploy import (
    at_level,
    builder_adapter_folder,
    builder_folder,
    export,
    folder_bytes,
    model_copy,
    weight_bytes,
)
from .llm_methods import BY_KEY, Deploy, Method
from .memory import PeakRSS, resident_bytes
from .retrieval import get_params, set_params

__all__ = ["JobConfig", "add_arguments", "config_from_args", "run"]


@dataclass
class Context:
    cfg: JobConfig
    tokenizer: object
    data: Data
    out: Path
    log: object = print
    folders: dict = field(default_factory=dict)  # row key -> genai folder
    known: dict = field(default_factory=dict)  # what a row learnt that the next need not retry

    @property
    def example(self) -> tuple:
        return (self.data.train[:2, :8],)

    @property
    def calibration(self) -> list:
        n = self.cfg.calibration_windows
        return [self.data.train[i : i + 16] for i in range(0, min(n, len(self.data.train)), 16)]


def build(method: Method, job: Context):
    """A fresh pretrained model, compiled with the method's policy (as it is for the base)."""
    model = load_model(job.cfg)
    if method.policy is None:
        return model
    torch.manual_seed(job.cfg.seed)  # the adapters' random start: the same command, the same table
    return compile(
        model,
        job.cfg.policy(method.policy),
        example_inputs=job.example,
        calibration=job.calibration if method.gptq else None,
    )


def choose_lr(model, method: Method, job: Context) -> tuple[E.LMTrainer, dict]:
    cfg = job.cfg

    def trainer(lr):
        label = f"{method.key} lr {lr:g}"
        return E.LMTrainer(
            model,
            job.data.train,
            batch=cfg.batch,
            lr=lr,
            total=cfg.steps,
            seed=cfg.seed,
            label=label,
            scale_lr=cfg.scale_lr,
        )

    rates = [lr * method.lr_scale for lr in cfg.lrs]
    if len(rates) == 1:
        return trainer(rates[0]), {}
    start = get_params(model)
    scores, best = {}, None
    for lr in rates:
        run = trainer(lr)
        run.run(min(cfg.lr_steps, cfg.steps))
        scores[lr] = E.torch_perplexity(model, job.data.val)
        if best is None or scores[lr] < scores[best[0]]:
            best = (lr, run.snapshot(), run.step_s)
        set_params(model, start)
    lr, snap, step_s = best
    run = trainer(lr)
    run.restore(snap)
    run.step_s = list(step_s)
    return run, scores


def tune(model, method: Method, job: Context, before: int | None) -> dict:
    """Train ``model`` (rate search first); ``before``: the resident set before it was built."""
    run, search = choose_lr(model, method, job)
    started = time.perf_counter()
    with PeakRSS(before) as peak:
        run.run(job.cfg.steps - run.done)
    text = ", ".join(f"{r:g}: {s:.2f}" for r, s in search.items())
    searched = f" (perplexity on the set-aside windows after {job.cfg.lr_steps} steps: {text})"
    last = run.done - min(job.cfg.lr_steps, job.cfg.steps) if search else run.done
    job.log(
        f"{method.key}: lr {run.lr:g}{searched if search else ''}; {run.done} steps, the last "
        f"{last} in {time.perf_counter() - started:.0f} s"
    )
    return {
        "lr": run.lr,
        "search": {str(k): v for k, v in search.items()},
        "step_ms": 1000 * sorted(run.step_s)[len(run.step_s) // 2],
        "peak_rss": peak.grown,  # the model, its optimizer and a step, libraries left out
        "peak_rss_process": peak.bytes,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def deployed(model, deploy: Deploy, method: Method, job: Context) -> tuple[object, str]:
    """The model a row deploys (PyTorch rows: the model itself) and how its folder is made."""
    cfg = job.cfg
    if deploy.kind == "torch":
        return model, "PyTorch"
    if deploy.kind == "fold":
        return fold(model, zeros=deploy.zeros), "export_genai"
    merged = fold(model) if method.policy else model  # LoRA into fp32 weights (exact, float)
    if deploy.kind == "gptq":
        torch.manual_seed(cfg.seed)
        quantized = compile(
            model_copy(merged),
            cfg.policy({"method": "rtn", "quantizer": "gptq"}),
            example_inputs=job.example,
            calibration=job.calibration,
        )
        return quantized, "export_genai"
    if deploy.kind == "builder-adapter":
        return model, "model builder, adapter_path"  # the LoRA model: its base and its adapters
    return merged, "model builder"


def measure_row(model, deploy: Deploy, method: Method, job: Context, trained: dict) -> dict:
    key = f"{method.key}-{deploy.kind}"
    target, how = deployed(model, deploy, method, job)
    row = {"key": key, "label": deploy.label, "ours": deploy.ours, **trained}
    prompt, new = job.data.prompt, job.cfg.new_tokens
    if deploy.kind == "torch":
        row.update(engine="PyTorch", perplexity=E.torch_perplexity(target, job.data.eval))
        tokens, _ = E.torch_greedy(target, prompt, new)
    else:
        folder = job.out / "folders" / key
        if deploy.kind == "builder":
            folder, how = builder_folder(
                target, job.tokenizer, folder, job.cfg.group_size, job.known
            )
        elif deploy.kind == "builder-adapter":
            cfg = job.cfg  # the base: the pretrained weights, loaded if the builder runs
            folder, how = builder_adapter_folder(
                target, partial(load_model, cfg), job.tokenizer, folder, cfg, job.known
            )
        else:
            export(target, folder, job.tokenizer)
        job.folders[key] = folder
        row.update(
            engine="onnxruntime",
            how=how,
            folder=str(folder),
            size=folder_bytes(folder),
            weights=weight_bytes(folder),
            perplexity=E.folder_perplexity(folder, job.data.eval),
        )
        tokens = E.ours_greedy(folder, prompt, new)
        if deploy.ours:
            row.update(token_check(target, folder, prompt, new))
    row["continuation"] = job.tokenizer.decode(tokens, skip_special_tokens=True)
    job.log(f"{deploy.label}: perplexity {row['perplexity']:.3f}")
    return row


def token_check(model, folder: Path, prompt, new: int) -> dict:
    """Greedy tokens of onnxruntime-genai, our loop and the folded PyTorch model (accuracy 0)."""
    want, margins = E.torch_greedy(model, prompt, new)
    ours = E.ours_greedy(folder, prompt, new)
    og = E.og_greedy(folder, prompt, new)
    return {
        "tokens_ours_eq_torch": E.same_up_to_ties(ours, want, margins),
        "tokens_og_eq_ours": None if og is None else og == ours,
    }


def measure(method: Method, job: Context) -> list[dict]:
    gc.collect()  # the rows before leave nothing behind in the figure below
    before = resident_bytes()
    model = build(method, job)
    trained = tune(model, method, job, before) if method.train else {"trainable": 0}
    if method.train and any(d.ours for d in method.deploys):
        save_adapters(model, job.out / "adapters" / method.key)
    return [measure_row(model, d, method, job, trained) for d in method.deploys]


def speeds(job: Context) -> dict[str, float]:
    """Decode ms/token of every folder at accuracy level 4 (int8 activations, as deployed)."""
    level4 = {}
    for key, folder in job.folders.items():
        copy_dir = job.out / "folders-acc4" / key
        if copy_dir.exists():
            shutil.rmtree(copy_dir)
        shutil.copytree(folder, copy_dir)
        at_level(folder / "model.onnx", copy_dir / "model.onnx", 4)
        level4[key] = copy_dir
    return E.decode_ms(level4, job.data.prompt, job.cfg.decode_tokens, job.cfg.latency_rounds)


def run(cfg: JobConfig, log=print) -> dict:
    """The job end to end: every row, their decode speed, results.md/json and the figure."""
    started = time.perf_counter()
    tokenizer = load_tokenizer(cfg)
    data = load_data(cfg, tokenizer)  # bad modules fail here, before anything is written
    check_out_dir(Path(cfg.out))
    log(data.summary)
    job = Context(cfg, tokenizer, data, Path(cfg.out), log)
    rows = []
    for key in cfg.methods:
        rows += measure(BY_KEY[key], job)
    ms = speeds(job)
    for row in rows:
        if row["key"] in ms:
            row["decode_rounds"] = ms[row["key"]]
            row["decode_ms"] = statistics.median(ms[row["key"]])
    result = report.write(job, rows, time.perf_counter() - started)
    log(result["text"])
    return {"rows": rows, "summary": data.summary, **result}
