"""The distillation job: a real pretrained sentence encoder (MiniLM-L6) to pure INT4 ONNX, measured.

compile (QA-LoRA, INT-``bits`` in groups of ``group_size``, every linear layer, the
base rounded by GPTQ on ``calibration_sentences`` training sentences) -> distil the
adapters toward the fp32 model's hidden states on unlabeled text -> fold (split zero
points) -> export ONNX -> run with onnxruntime -> one table against fp32, RTN (no
training), GPTQ (no training), onnxruntime's own INT4 quantizer and the QLoRA way (NF4 +
LoRA trained on the same budget, then merged and requantized), by mean and worst cosine
similarity to the fp32 sentence embeddings on held-out sentences, file size and latency
at batch 1 (onnxruntime, one thread, accuracy level 0 for every file).

The model is ``pretrained.load_minilm``; the text is ``lowrank_compiler.data``.
``lowrank-compiler demo`` and ``examples/minilm_qalora.py`` run it with the options of
``add_arguments``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path


from .. import data
from ..adapters import save_adapters
from ..api import compile, fold
from ..export import export_onnx, inspect_onnx
from ..policy import Policy
from ..pretrained import load_minilm, tokenize
from ..runtime.errors import PolicyError
from ..runtime.files import write_atomic
from ..runtime.formats import KERNEL_BITS, QUANTIZERS
from ..runtime.session import load
from .encoder import (add_common_arguments, check_out_dir, cosines, distil, latency_ms, onnx_embed, ort_quantize,
                      torch_embed)


@dataclass(frozen=True)
class JobConfig:
    bits: int = 4
    group_size: int = 32
    rank: int = 16
    alpha: float = 32.0
    steps: int = 300
    batch: int = 16
    lr: float = 5e-3
    eval_sentences: int = 256
    quantizer: str = "gptq"  # how the base is rounded: "gptq" (QA-LoRA's own start) or "rtn"
    calibration_sentences: int = 512  # GPTQ's statistics, from the training text
    seed: int = 0
    out: str = "out/minilm"
    baselines: bool = True  # RTN, onnxruntime's quantizer, QLoRA

    def __post_init__(self):
        """Bad settings fail here, before the model loads or any file is written."""
        self.policy("qalora", self.quantizer)  # bits, group_size, rank, alpha, quantizer: the policy's own checks
        if self.bits not in KERNEL_BITS:
            raise PolicyError(f"bits must be one of {KERNEL_BITS} for the job: {self.bits}-bit weights have no "
                              f"onnxruntime kernel")
        held_out = len(data.split()[1])
        limits = (("steps", 0, None, ""), ("batch", 1, None, ""), ("eval_sentences", 1, held_out, "held-out"),
                  ("calibration_sentences", 1, len(data.split()[0]), "training"), ("seed", 0, None, ""))
        for name, low, high, text in limits:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                span = f">= {low}" if high is None else f"in [{low}, {high}] (the {text} sentences)"
                raise PolicyError(f"{name} must be an integer {span}, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise PolicyError(f"lr must be a positive finite number, got {self.lr!r}")

    def training(self) -> dict:
        """The distillation loop's settings (``encoder.distil``)."""
        return {"steps": self.steps, "batch": self.batch, "lr": self.lr, "seed": self.seed}

    def policy(self, method: str, quantizer: str = "rtn") -> Policy:
        return Policy(method=method, bits=self.bits, group_size=self.group_size, rank=self.rank, alpha=self.alpha,
                      quantizer=quantizer)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's options, shared by the command line and the example script."""
    add_common_arguments(parser, steps=300, steps_help="training steps of 16 sentences", out="out/minilm")
    parser.add_argument("--eval-sentences", type=int, default=256)
    parser.add_argument("--calibration-sentences", type=int, default=512, help="GPTQ's statistics (training text)")
    parser.add_argument("--quantizer", choices=QUANTIZERS, default="gptq",
                        help="how the INT base is rounded before training (gptq: calibrated on training text)")
    parser.add_argument("--no-baselines", action="store_true", help="skip RTN, onnxruntime's quantizer and QLoRA")


def config_from_args(args: argparse.Namespace) -> JobConfig:
    return JobConfig(bits=args.bits, group_size=args.group_size, rank=args.rank, alpha=2.0 * args.rank,
                     steps=args.steps, eval_sentences=args.eval_sentences, out=args.out,
                     calibration_sentences=args.calibration_sentences, quantizer=args.quantizer,
                     baselines=not args.no_baselines)


def run(cfg: JobConfig, log=print) -> dict:
    out = Path(cfg.out)
    check_out_dir(out)
    teacher, tokenizer = load_minilm()
    train_text, eval_text = data.split()
    eval_text = eval_text[: cfg.eval_sentences]
    log(f"MiniLM-L6: {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M parameters; "
        f"{len(train_text)} training and {len(eval_text)} held-out sentences")
    t = tokenize(tokenizer, train_text[:2])
    example = (t["input_ids"],)
    kwargs = {"attention_mask": t["attention_mask"]}
    ref = torch_embed(teacher, tokenizer, eval_text)
    cal_text = train_text[: cfg.calibration_sentences]
    calibration = [dict(tokenize(tokenizer, cal_text[i:i + 32])) for i in range(0, len(cal_text), 32)]
    rows, files = {}, {}

    def student(method, quantizer="rtn"):
        model, _ = load_minilm()
        return compile(model, cfg.policy(method, quantizer), example_inputs=example, example_kwargs=kwargs,
                       calibration=calibration if quantizer == "gptq" else None,
                       dump_dir=out / "dumps" if method == "qalora" else None)

    def export(model, name):
        files[name] = export_onnx(model, out / f"{name}.onnx", example_inputs=example, example_kwargs=kwargs)
        return files[name]

    files["fp32"] = export(teacher, "fp32")
    started = time.perf_counter()
    ours = student("qalora", cfg.quantizer)
    losses = distil(ours, teacher, tokenizer, train_text, label="QA-LoRA", **cfg.training())
    train_s = time.perf_counter() - started
    trained_emb = torch_embed(ours, tokenizer, eval_text)
    deployed = fold(ours, zeros="split", dump_dir=out / "dumps")
    export(deployed, "qalora_int4")
    save_adapters(ours, out / "adapters")
    ours_onnx = onnx_embed(load(files["qalora_int4"]), tokenizer, eval_text)
    onnx_vs_torch = cosines(ours_onnx, trained_emb)
    rows["fp32"] = cosines(onnx_embed(load(files["fp32"]), tokenizer, eval_text), ref)
    if cfg.baselines:
        export(student("rtn"), "rtn_int4")
        rows["RTN INT4 (no training)"] = cosines(onnx_embed(load(files["rtn_int4"]), tokenizer, eval_text), ref)
        if cfg.quantizer == "gptq":
            export(student("rtn", quantizer="gptq"), "gptq_int4")
            rows["GPTQ INT4 (no training)"] = cosines(onnx_embed(load(files["gptq_int4"]), tokenizer, eval_text), ref)
        files["ort_int4"] = ort_quantize(files["fp32"], out / "ort_int4.onnx", bits=cfg.bits,
                                         group_size=cfg.group_size)
        rows["onnxruntime INT4 quantizer"] = cosines(onnx_embed(load(files["ort_int4"]), tokenizer, eval_text), ref)
        qlora = student("qlora")
        distil(qlora, teacher, tokenizer, train_text, label="QLoRA", **cfg.training())
        export(fold(qlora), "qlora_merged_int4")
        rows["QLoRA, merged + requantized"] = cosines(
            onnx_embed(load(files["qlora_merged_int4"]), tokenizer, eval_text), ref)
    ours_label = f"QA-LoRA{' over GPTQ' if cfg.quantizer == 'gptq' else ''}, folded (ours)"
    rows[ours_label] = cosines(ours_onnx, ref)
    names = {"fp32": "fp32", "RTN INT4 (no training)": "rtn_int4", "GPTQ INT4 (no training)": "gptq_int4",
             "onnxruntime INT4 quantizer": "ort_int4", "QLoRA, merged + requantized": "qlora_merged_int4",
             ours_label: "qalora_int4"}
    table = [f"MiniLM-L6, INT{cfg.bits} g{cfg.group_size}, rank {cfg.rank}, {cfg.steps} steps x {cfg.batch} "
             f"sentences ({train_s:.0f} s to compile and train, {cfg.quantizer.upper()} base"
             f"{f' from {len(cal_text)} sentences' if cfg.quantizer == 'gptq' else ''}); "
             f"{len(eval_text)} held-out sentences; cosine to fp32 "
             f"embeddings computed by onnxruntime at accuracy level 0; latency: batch 1, one thread, "
             f"median of 30 runs, INT4 kernels at accuracy level 0 and 4 (int8 activations)", "",
             "| model | mean cosine | worst cosine | file size | latency acc0 | latency acc4 |",
             "| --- | --- | --- | --- | --- | --- |"]
    sentence = eval_text[0]
    for label, (mean, worst) in rows.items():
        path = files[names[label]]
        acc0 = latency_ms(path, tokenizer, sentence, 0)
        acc4 = "-" if label == "fp32" else f"{latency_ms(path, tokenizer, sentence, 4):.2f} ms"
        table.append(f"| {label} | {mean:.4f} | {worst:.4f} | {path.stat().st_size / 2**20:.1f} MiB | "
                     f"{acc0:.2f} ms | {acc4} |")
    rtn = rows.get("RTN INT4 (no training)", (None,))[0]
    ours_mean = rows[ours_label][0]
    table.append("")
    if rtn is not None and rtn < 1:
        table.append(f"gap to fp32 closed, mean cosine: (ours - RTN) / (1 - RTN) = {(ours_mean - rtn) / (1 - rtn):.1%}")
    gptq = rows.get("GPTQ INT4 (no training)", (None,))[0]
    if gptq is not None and gptq < 1:
        table.append(f"of what GPTQ left, training closed (ours - GPTQ) / (1 - GPTQ) = "
                     f"{(ours_mean - gptq) / (1 - gptq):.1%}")
    table.append(f"ONNX vs the trained PyTorch model: mean cosine {onnx_vs_torch[0]:.6f}, worst {onnx_vs_torch[1]:.6f}; "
                 f"pure INT4: {'yes' if inspect_onnx(files['qalora_int4']).is_pure_int4 else 'no'}")
    text = "\n".join(table) + "\n"
    write_atomic(out / "results.md", text)
    log(text)
    return {"rows": rows, "onnx_vs_torch": onnx_vs_torch, "losses": losses, "files": {k: str(v) for k, v in files.items()}}
