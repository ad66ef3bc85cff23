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

The model is ``pretrained.load_minilm``; the text is ``lowrank_compiler.data``.
``lowrank-compiler demo`` and ``examples/minilm_qalora.py`` run it with the options of
``add_arguments``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ...adapters import save_adapters
from ...api import compile, fold
from ...embeddings import quantize_embeddings
from ...export import export_onnx, inspect_onnx
from ...policy import Policy
from ...runtime.errors import PolicyError
from ...runtime.files import write_atomic
from ...runtime.quant.formats import (
    EMBEDDINGS,
    KERNEL_BITS,
    QUANTIZERS,
    check_choice,
    check_group_size,
)
from ...runtime.serve.load import load
from .. import data
from ..pretrained import load_minilm, tokenize
from .encoder import (
    SCALE_LR,
    add_common_arguments,
    check_out_dir,
    cosines,
    distil,
    latencies_ms,
    onnx_embed,
    ort_quantize,
    scale_rate,
    torch_embed,
)

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
    lrqat_lr: float = (
        3e-4  # LR-QAT's adapter is in grid units; the best of 1e-1 ... 3e-4 over GPTQ (README)
    )
    train_scales: bool = (
        True  # QA-LoRA and LR-QAT also train each group's scale (README: better for both)
    )
    scale_lr: float | None = (
        SCALE_LR  # the scales' learning rate (a relative step); None: the method's
    )
    methods: tuple[str, ...] = (
        "lrqat",
    )  # at least QA-LoRA's mean and worst, with no correction node (README)
    eval_sentences: int = 256
    quantizer: str = "gptq"  # how the base is rounded: "gptq" (QA-LoRA's own start) or "rtn"
    calibration_sentences: int = 512  # GPTQ's statistics, from the training text
    seed: int = 0
    out: str = "out/minilm"
    baselines: bool = True  # RTN, onnxruntime's quantizer, QLoRA
    # the vocabulary table (45 of the 54 MiB left after INT4 linears) as GatherBlockQuantized: at
    # g16 the
    # held-out cosines move by less than 0.001 (g32 costs the worst sentence ~0.003)
    embeddings: str = "int4"
    embedding_group_size: int = 16

    def __post_init__(self):
        """Bad settings fail here, before the model loads or any file is written."""
        self.policy(
            "qalora", self.quantizer
        )  # bits, group_size, rank, alpha, quantizer: the policy's own checks
        if self.bits not in KERNEL_BITS:
            raise PolicyError(
                f"bits must be one of {KERNEL_BITS} for the job: {self.bits}-bit weights have no "
                f"onnxruntime kernel"
            )
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
        check_choice(self.embeddings, EMBEDDINGS, "embeddings")
        check_group_size(self.embedding_group_size, "embedding_group_size")
        if not isinstance(self.train_scales, bool):
            raise PolicyError(f"train_scales must be true or false, got {self.train_scales!r}")
        for name in ("lr", "lrqat_lr") + (("scale_lr",) if self.scale_lr is not None else ()):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value < float("inf")
            ):
                raise PolicyError(f"{name} must be a positive finite number, got {value!r}")
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
        object.__setattr__(self, "methods", methods)

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


def run(cfg: JobConfig, log=print) -> dict:
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
    example = (t["input_ids"],)
    kwargs = {"attention_mask": t["attention_mask"]}
    ref = torch_embed(teacher, tokenizer, eval_text)
    cal_text = train_text[: cfg.calibration_sentences]
    calibration = [
        dict(tokenize(tokenizer, cal_text[i : i + 32])) for i in range(0, len(cal_text), 32)
    ]
    rows, files = {}, {}

    def student(method, quantizer="rtn", dumps=None):
        model, _ = load_minilm()
        torch.manual_seed(
            cfg.seed
        )  # the adapters' random init: the same command gives the same table
        return compile(
            model,
            cfg.policy(method, quantizer),
            example_inputs=example,
            example_kwargs=kwargs,
            calibration=calibration if quantizer == "gptq" else None,
            dump_dir=dumps,
        )

    def export(model, name):
        tables = {"embeddings": cfg.embeddings, "embedding_group_size": cfg.embedding_group_size}
        files[name] = export_onnx(
            model,
            out / f"{name}.onnx",
            example_inputs=example,
            example_kwargs=kwargs,
            **(tables if name != "fp32" else {}),
        )
        return files[name]

    def train_ours(method, suffix):
        """Compile, distil, fold, export, save: (its ONNX embeddings, ONNX vs PyTorch, losses,
        seconds)."""
        started = time.perf_counter()
        model = student(method, cfg.quantizer, dumps=out / f"dumps{suffix}")
        losses = distil(
            model, teacher, tokenizer, train_text, label=LABELS[method], **cfg.training(method)
        )
        seconds = time.perf_counter() - started
        if (
            cfg.embeddings == "int4"
        ):  # the table as the file holds it, so ONNX vs PyTorch compares one model
            quantize_embeddings(model, group_size=cfg.embedding_group_size)
        trained_emb = torch_embed(model, tokenizer, eval_text)
        export(fold(model, zeros="split", dump_dir=out / f"dumps{suffix}"), f"{method}_int4")
        save_adapters(model, out / f"adapters{suffix}")
        emb = onnx_embed(load(files[f"{method}_int4"]), tokenizer, eval_text)
        return emb, cosines(emb, trained_emb), losses, seconds

    files["fp32"] = export(teacher, "fp32")
    trained = {m: train_ours(m, "" if i == 0 else f"-{m}") for i, m in enumerate(cfg.methods)}
    first = cfg.methods[0]
    _, onnx_vs_torch, losses, train_s = trained[first]
    rows["fp32"] = cosines(onnx_embed(load(files["fp32"]), tokenizer, eval_text), ref)
    if cfg.baselines:
        export(student("rtn"), "rtn_int4")
        rows["RTN INT4 (no training)"] = cosines(
            onnx_embed(load(files["rtn_int4"]), tokenizer, eval_text), ref
        )
        if cfg.quantizer == "gptq":
            export(student("rtn", quantizer="gptq"), "gptq_int4")
            rows["GPTQ INT4 (no training)"] = cosines(
                onnx_embed(load(files["gptq_int4"]), tokenizer, eval_text), ref
            )
        files["ort_int4"] = ort_quantize(
            files["fp32"], out / "ort_int4.onnx", bits=cfg.bits, group_size=cfg.group_size
        )
        rows["onnxruntime INT4 quantizer"] = cosines(
            onnx_embed(load(files["ort_int4"]), tokenizer, eval_text), ref
        )
        qlora = student("qlora")
        distil(qlora, teacher, tokenizer, train_text, label="QLoRA", **cfg.training())
        export(fold(qlora), "qlora_merged_int4")
        rows["QLoRA, merged + requantized"] = cosines(
            onnx_embed(load(files["qlora_merged_int4"]), tokenizer, eval_text), ref
        )
    names = {
        "fp32": "fp32",
        "RTN INT4 (no training)": "rtn_int4",
        "GPTQ INT4 (no training)": "gptq_int4",
        "onnxruntime INT4 quantizer": "ort_int4",
        "QLoRA, merged + requantized": "qlora_merged_int4",
    }
    labels = {}
    for method, (emb, _, _, _) in trained.items():
        scales = " + trained scales" if cfg.policy(method).train_scales else ""
        labels[method] = (
            f"{LABELS[method]}{scales}{' over GPTQ' if cfg.quantizer == 'gptq' else ''}, folded "
            "(ours)"
        )
        rows[labels[method]] = cosines(emb, ref)
        names[labels[method]] = f"{method}_int4"
    ours_label = labels[first]
    lrs = ", ".join(f"{LABELS[m]} lr {cfg.training(m)['lr']:g}" for m in cfg.methods)
    if any(cfg.policy(m).train_scales for m in cfg.methods):
        lrs += (
            f", scales {scale_rate(cfg.scale_lr, cfg.bits):g}"
            if cfg.scale_lr
            else ", scales at the method's rate"
        )
    tables = (
        f"INT4 g{cfg.embedding_group_size} (GatherBlockQuantized)"
        if cfg.embeddings == "int4"
        else "float"
    )
    table = [
        f"MiniLM-L6, INT{cfg.bits} g{cfg.group_size}, rank {cfg.rank}, {cfg.steps} steps x "
        f"{cfg.batch} "
        f"sentences, {lrs} ({train_s:.0f} s to compile and train {LABELS[first]}, "
        f"{cfg.quantizer.upper()} base"
        f"{f' from {len(cal_text)} sentences' if cfg.quantizer == 'gptq' else ''}); "
        f"{len(eval_text)} held-out sentences; cosine to fp32 "
        f"embeddings computed by onnxruntime at accuracy level 0; latency: batch 1, one thread, "
        "median of 50 runs per file in 10 interleaved rounds, INT4 kernels at accuracy level 0 "
        "and 4 "
        f"(int8 activations); vocabulary table "
        f"{tables}"
        f" in our INT files, float in onnxruntime's quantizer's",
        "",
        "| model | mean cosine | worst cosine | file size | latency acc0 | latency acc4 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    sentence = eval_text[0]
    paths = {label: files[names[label]] for label in rows}
    acc0 = latencies_ms(paths, tokenizer, sentence, 0)
    acc4 = latencies_ms({k: v for k, v in paths.items() if k != "fp32"}, tokenizer, sentence, 4)
    for label, (mean, worst) in rows.items():
        path = paths[label]
        table.append(
            f"| {label} | {mean:.4f} | {worst:.4f} | {path.stat().st_size / 2**20:.1f} MiB | "
            f"{acc0[label]:.2f} ms | {f'{acc4[label]:.2f} ms' if label in acc4 else '-'} |"
        )
    rtn = rows.get("RTN INT4 (no training)", (None,))[0]
    ours_mean = rows[ours_label][0]
    table.append("")
    if rtn is not None and rtn < 1:
        table.append(
            "gap to fp32 closed, mean cosine: (ours - RTN) / (1 - RTN) = "
            f"{(ours_mean - rtn) / (1 - rtn):.1%}"
        )
    gptq = rows.get("GPTQ INT4 (no training)", (None,))[0]
    if gptq is not None and gptq < 1:
        table.append(
            f"of what GPTQ left, training closed (ours - GPTQ) / (1 - GPTQ) = "
            f"{(ours_mean - gptq) / (1 - gptq):.1%}"
        )
    for method, (_, match, _, _) in trained.items():
        pure = inspect_onnx(files[f"{method}_int4"]).is_pure_int4
        table.append(
            f"{LABELS[method]}: ONNX vs the trained PyTorch model: mean cosine {match[0]:.6f}, "
            f"worst {match[1]:.6f}; pure INT4: {'yes' if pure else 'no'}"
        )
    text = "\n".join(table) + "\n"
    write_atomic(out / "results.md", text)
    log(text)
    return {
        "rows": rows,
        "onnx_vs_torch": onnx_vs_torch,
        "losses": losses,
        "files": {k: str(v) for k, v in files.items()},
        "methods": {
            m: {"onnx_vs_torch": t[1], "losses": t[2], "train_s": t[3]} for m, t in trained.items()
        },
    }
