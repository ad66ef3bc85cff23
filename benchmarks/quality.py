"""1. Quality: the pretrained MiniLM after each INT-N method, at every bits x group size.

At each (bits, group):

- RTN: min-max round to nearest per group, no training;
- GPTQ: the same format rounded with error feedback along 512 training sentences'
  input statistics (``quantizer="gptq"``), no training;
- onnxruntime's ``MatMulNBitsQuantizer`` on the fp32 ONNX file: its default (RTN,
  asymmetric) and HQQ; it has 2-, 4- and 8-bit kernels only, so no 3-bit point;
- QLoRA: NF4 base + LoRA, distilled once (NF4 depends on neither bits nor group), then
  merged and requantized to INT-bits in groups (the peers' merge) at each point;
- ours: QA-LoRA over the GPTQ base (the distillation job's recipe), distilled with float zero
  points (deployed ``split``) and with integer zero points (deployed as is), and LR-QAT from
  the same GPTQ base (adapters inside the rounding, folded into integer codes), each trained
  afresh at each point.

Training is ``jobs.encoder.distil``: masked MSE to the fp32 hidden states, rank 16, alpha 32,
AdamW lr 5e-3 (LR-QAT: the job's ``lrqat_lr``; ours train their scales as the job's
``train_scales`` and ``scale_lr`` say, the latter scaled per width by ``encoder.scale_rate``)
but a short budget of ``steps`` x ``batch`` sentences, the same batches for every method. Quality is
the mean and worst cosine of the
mean-pooled embeddings to fp32 on held-out sentences, computed on the deployed form:
folded / merged PyTorch models (their ONNX exports match them, checked at the first
ONNX-able point) and onnxruntime sessions for the peers' files. Bits per weight = bytes of
the targeted layers' weights x 8 / weights (codes, scales, zero points, correction).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import onnx
import torch

from lowrank_compiler import Policy, compile, compile_info, export_onnx, fold
from lowrank_compiler.app import data
from lowrank_compiler.app.jobs import encoder
from lowrank_compiler.app.jobs.distill import JobConfig
from lowrank_compiler.app.pretrained import load_minilm, tokenize
from lowrank_compiler.runtime.files import commit, staged_file
from lowrank_compiler.runtime.quant.formats import (
    BITS,
    KERNEL_BITS,
    ZERO_POINT_MODES,
    group_size_problem,
)
from lowrank_compiler.runtime.serve.load import load

from .common import base_linear_bytes, check_settings
from .onnx_bytes import file_bytes, linear_weights

ORT_BITS = KERNEL_BITS  # MatMulNBits kernels
METHODS = (
    "RTN",
    "GPTQ",
    "onnxruntime RTN",
    "onnxruntime HQQ",
    "QLoRA merged",
    "QA-LoRA float zeros (ours)",
    "QA-LoRA int zeros (ours)",
    "LR-QAT (ours)",
)


@dataclass(frozen=True)
class Settings:
    bits: tuple[int, ...] = (4, 3, 2)
    groups: tuple[int, ...] = (32, 64, 128)
    steps: int = 32  # a short budget: 28 trained runs must fit the suite's time
    batch: int = 16
    eval_sentences: int = 256
    calibration_sentences: int = 512  # GPTQ's statistics, as in the distillation job
    ort: bool = True  # onnxruntime's quantizer (needs the fp32 ONNX export)
    hqq: bool = True
    onnx_check: bool = True  # export ours at the first 4-bit point: sizes, and ONNX == PyTorch

    def __post_init__(self):
        check_settings(
            "quality",
            bits=self.bits,
            groups=self.groups,
            steps=self.steps,
            batch=self.batch,
            eval_sentences=self.eval_sentences,
        )
        if not set(self.bits) <= set(BITS):
            raise ValueError(f"quality.bits must be drawn from {BITS}, got {self.bits!r}")
        if any(group_size_problem(g) for g in self.groups):
            raise ValueError(f"quality.groups must be powers of two >= 16, got {self.groups!r}")


class CachedTeacher:
    """The fp32 model's hidden states, kept per batch: every run draws the same batches
    (``distil`` seeds its sampler), so the teacher runs once per batch, not once per method."""

    def __init__(self, model):
        self.model, self.cache = model, {}

    def __call__(self, *, input_ids, attention_mask):
        key = (
            tuple(input_ids.shape),
            input_ids.numpy().tobytes(),
            attention_mask.numpy().tobytes(),
        )
        if key not in self.cache:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            self.cache[key] = SimpleNamespace(last_hidden_state=out.last_hidden_state)
        return self.cache[key]


def ort_file(src: Path, dst: Path, bits: int, group: int, algo: str) -> Path:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if algo == "default":
        return encoder.ort_quantize(src, dst, bits=bits, group_size=group)
    for name in (
        "onnx_ir",
        "onnxscript",
        "onnxruntime.quantization",
    ):  # it logs every node it visits
        logging.getLogger(name).setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(
        str(src), algo_config=HQQWeightOnlyQuantConfig(block_size=group, bits=bits)
    )
    with warnings.catch_warnings():  # it hands torch a read-only numpy view; harmless here
        warnings.simplefilter("ignore", UserWarning)
        q.process()
    with staged_file(dst) as tmp:
        q.model.save_model_to_file(str(tmp))
        commit(tmp, dst)
    return dst


class Sweep:
    """The shared state of one sweep: the fp32 model, its embeddings, the rows measured."""

    def __init__(self, s: Settings, work: Path, log):
        self.s, self.work, self.log = s, work, log
        self.teacher, self.tok = load_minilm()
        self.train, held = data.split()
        self.held = held[: s.eval_sentences]
        self.cfg = JobConfig(steps=s.steps, batch=s.batch)
        self.ref = encoder.torch_embed(self.teacher, self.tok, self.held)
        self.cached = CachedTeacher(self.teacher)
        t = tokenize(self.tok, self.train[:2])
        self.example, self.kwargs = (t["input_ids"],), {"attention_mask": t["attention_mask"]}
        self.points, self.train_s, self.sizes, self.ort_layers = [], {}, {}, None
        cal = self.train[: s.calibration_sentences]
        self.calibration = [
            dict(tokenize(self.tok, cal[i : i + 32])) for i in range(0, len(cal), 32)
        ]

    def add(self, method, bits, group, emb, nbytes, weights, **extra) -> None:
        mean, worst = encoder.cosines(emb, self.ref)
        self.points.append(
            {
                "method": method,
                "bits": bits,
                "group": group,
                "mean": mean,
                "worst": worst,
                "bpw": 8 * nbytes / weights,
                **extra,
            }
        )
        self.log(f"  {method}: mean cosine {mean:.4f}, worst {worst:.4f}")

    def add_model(self, method, bits, group, model) -> None:
        self.add(
            method,
            bits,
            group,
            encoder.torch_embed(model, self.tok, self.held),
            *base_linear_bytes(model),
        )

    def student(self, **policy):
        torch.manual_seed(self.cfg.seed)  # the adapters' random init
        # by module name: the same 37 layers the traced compile selects, without tracing each time
        gptq = policy.get("quantizer") == "gptq"
        return compile(
            copy.deepcopy(self.teacher),
            Policy(rank=self.cfg.rank, alpha=self.cfg.alpha, **policy),
            trace_mode="modules",
            calibration=self.calibration if gptq else None,
        )

    def distil(self, model, label: str, method: str = "qalora") -> None:
        started = time.perf_counter()
        encoder.distil(
            model, self.cached, self.tok, self.train, label=label, **self.cfg.training(method)
        )
        self.train_s.setdefault(label.split(" ")[0], []).append(time.perf_counter() - started)

    def export(self, model, name: str) -> Path:
        return export_onnx(
            model,
            self.work / f"{name}.onnx",
            example_inputs=self.example,
            example_kwargs=self.kwargs,
        )

    def peers(self, fp32_path: Path, bits: int, group: int) -> None:
        """onnxruntime's quantizer, default and HQQ: a mode that does not run here is reported, not
        fatal."""
        algos = [("default", "onnxruntime RTN")] + (
            [("hqq", "onnxruntime HQQ")] if self.s.hqq else []
        )
        for algo, label in algos:
            try:
                path = ort_file(
                    fp32_path,
                    self.work / f"minilm_ort_{algo}_{bits}_{group}.onnx",
                    bits,
                    group,
                    algo,
                )
                self.add(
                    label,
                    bits,
                    group,
                    encoder.onnx_embed(load(path), self.tok, self.held),
                    *linear_weights(path),
                )
            except Exception as e:
                self.points.append(
                    {
                        "method": label,
                        "bits": bits,
                        "group": group,
                        "error": f"{type(e).__name__}: {e}",
                    }
                )
                continue
            if (bits, group, algo) == (4, self.s.groups[0], "default"):
                self.sizes[f"onnxruntime RTN INT4 g{group}"] = (
                    file_bytes(path),
                    *linear_weights(path),
                )
                self.ort_layers = sum(
                    n.op_type == "MatMulNBits" for n in onnx.load(str(path)).graph.node
                )

    def ours(self, bits: int, group: int) -> None:
        scales = {"train_scales": self.cfg.train_scales}
        runs = [
            (
                f"QA-LoRA-{zp}",
                f"QA-LoRA {zp} zeros (ours)",
                zp,
                {"method": "qalora", "zero_point": zp, **scales},
            )
            for zp in ZERO_POINT_MODES
        ] + [("LR-QAT", "LR-QAT (ours)", "lrqat", {"method": "lrqat", **scales})]
        for name, label, key, policy in runs:
            model = self.student(bits=bits, group_size=group, quantizer="gptq", **policy)
            self.distil(model, f"{name} INT{bits} g{group}", policy["method"])
            folded = fold(model, zeros="split")
            emb = encoder.torch_embed(folded, self.tok, self.held)
            self.add(label, bits, group, emb, *base_linear_bytes(folded))
            if self.s.onnx_check and bits == 4 and group == self.s.groups[0]:
                self.log(f"  export {label} to ONNX")
                path = self.export(folded, f"minilm_ours_{key}")
                self.points[-1]["onnx_vs_torch"] = encoder.cosines(
                    encoder.onnx_embed(load(path), self.tok, self.held), emb
                )[1]
                form = {
                    "float": "split (trained with float zeros)",
                    "int": "integer zeros",
                    "lrqat": "LR-QAT integer codes",
                }[key]
                self.sizes[f"ours, {form}, INT4 g{group}"] = (
                    file_bytes(path),
                    *linear_weights(path),
                )


def run(s: Settings, work: Path, log) -> dict:
    sw = Sweep(s, work, log)
    fp32_path = None
    if s.ort or s.onnx_check:
        log("quality: export the fp32 model to ONNX")
        fp32_path = sw.export(sw.teacher, "minilm_fp32")
    log(
        f"quality: MiniLM, {len(sw.held)} held-out sentences, {s.steps} steps x {s.batch} "
        "sentences per trained point"
    )
    qlora = sw.student(method="qlora")
    sw.distil(qlora, "QLoRA")
    sw.add_model("QLoRA before merge (NF4, not integer)", 4, 64, qlora)
    for bits in s.bits:
        for group in s.groups:
            log(f"quality: INT{bits} g{group}")
            sw.add_model("RTN", bits, group, sw.student(method="rtn", bits=bits, group_size=group))
            sw.add_model(
                "GPTQ",
                bits,
                group,
                sw.student(method="rtn", bits=bits, group_size=group, quantizer="gptq"),
            )
            if s.ort and bits in ORT_BITS:
                sw.peers(fp32_path, bits, group)
            info = compile_info(
                qlora
            )  # NF4 training does not depend on bits or group: only the merge's format does
            info.policy = dataclasses.replace(info.policy, bits=bits, group_size=group)
            sw.add_model("QLoRA merged", bits, group, fold(qlora))
            sw.ours(bits, group)
    sizes = (
        sw.sizes
        if fp32_path is None
        else {"fp32": (file_bytes(fp32_path), *linear_weights(fp32_path)), **sw.sizes}
    )
    return {
        "points": sw.points,
        "train_s": {k: sum(v) / len(v) for k, v in sw.train_s.items()},
        "settings": dataclasses.asdict(s),
        "sentences": len(sw.held),
        "minilm_files": sizes,
        "targeted_layers": sum(op.status == "selected" for op in compile_info(qlora).linears),
        "ort_layers": sw.ort_layers,
    }
