"""The distillation job's results (``distill``): one table of every row's cosine to fp32, file
size and latency, under a line that says how it was measured, then what training closed of the
gap to fp32 and whether each trained file matches its PyTorch model. Written to results.md.

Apart from the run so that the run reads as its steps and the wording reads in one place.
"""

from __future__ import annotations

from ...export import inspect_onnx
from ...runtime.files import write_atomic
from .distill_config import LABELS
from .encoder import scale_rate

# the rows that are not ours, by label, and the file (without .onnx) each one measures
FP32 = "fp32"
RTN = "RTN INT4 (no training)"
GPTQ = "GPTQ INT4 (no training)"
ORT = "onnxruntime INT4 quantizer"
QLORA = "QLoRA, merged + requantized"
FILES = {
    FP32: "fp32",
    RTN: "rtn_int4",
    GPTQ: "gptq_int4",
    ORT: "ort_int4",
    QLORA: "qlora_merged_int4",
}


def ours_label(cfg, method: str) -> str:
    """The row of a method the job trained, e.g. 'LR-QAT + trained scales over GPTQ, folded
    (ours)'."""
    scales = " + trained scales" if cfg.policy(method).train_scales else ""
    gptq = " over GPTQ" if cfg.quantizer == "gptq" else ""
    return f"{LABELS[method]}{scales}{gptq}, folded (ours)"


def _rates(cfg) -> str:
    """Each trained method's learning rate, and the scales' where they train."""
    rates = ", ".join(f"{LABELS[m]} lr {cfg.training(m)['lr']:g}" for m in cfg.methods)
    if any(cfg.policy(m).train_scales for m in cfg.methods):
        rates += (
            f", scales {scale_rate(cfg.scale_lr, cfg.bits):g}"
            if cfg.scale_lr
            else ", scales at the method's rate"
        )
    return rates


def header(cfg, train_s: float, n_calibration: int, n_eval: int) -> list[str]:
    """How the table was made (settings, budget, what is measured and how), then its head."""
    tables = (
        f"INT4 g{cfg.embedding_group_size} (GatherBlockQuantized)"
        if cfg.embeddings == "int4"
        else "float"
    )
    calibrated = f" from {n_calibration} sentences" if cfg.quantizer == "gptq" else ""
    return [
        f"MiniLM-L6, INT{cfg.bits} g{cfg.group_size}, rank {cfg.rank}, {cfg.steps} steps x "
        f"{cfg.batch} sentences, {_rates(cfg)} ({train_s:.0f} s to compile and train "
        f"{LABELS[cfg.methods[0]]}, {cfg.quantizer.upper()} base{calibrated}); "
        f"{n_eval} held-out sentences; cosine to fp32 embeddings computed by onnxruntime at "
        "accuracy level 0; latency: batch 1, one thread, median of 50 runs per file in 10 "
        "interleaved rounds, INT4 kernels at accuracy level 0 and 4 (int8 activations); "
        f"vocabulary table {tables} in our INT files, float in onnxruntime's quantizer's",
        "",
        "| model | mean cosine | worst cosine | file size | latency acc0 | latency acc4 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]


def table_rows(rows: dict, paths: dict, acc0: dict, acc4: dict) -> list[str]:
    """One line per row: cosines, file size, latency at accuracy level 0 and 4 ('-': not
    timed, the fp32 file has no INT4 kernel)."""
    lines = []
    for label, (mean, worst) in rows.items():
        path = paths[label]
        lines.append(
            f"| {label} | {mean:.4f} | {worst:.4f} | {path.stat().st_size / 2**20:.1f} MiB | "
            f"{acc0[label]:.2f} ms | {f'{acc4[label]:.2f} ms' if label in acc4 else '-'} |"
        )
    return lines


def gaps(rows: dict, ours: str) -> list[str]:
    """What the headline method closed of the gap RTN, then GPTQ, left to fp32 (where they
    ran and left one)."""
    lines = []
    ours_mean = rows[ours][0]
    rtn = rows.get(RTN, (None,))[0]
    if rtn is not None and rtn < 1:
        lines.append(
            "gap to fp32 closed, mean cosine: (ours - RTN) / (1 - RTN) = "
            f"{(ours_mean - rtn) / (1 - rtn):.1%}"
        )
    gptq = rows.get(GPTQ, (None,))[0]
    if gptq is not None and gptq < 1:
        lines.append(
            f"of what GPTQ left, training closed (ours - GPTQ) / (1 - GPTQ) = "
            f"{(ours_mean - gptq) / (1 - gptq):.1%}"
        )
    return lines


def parity(trained: dict, files: dict) -> list[str]:
    """Each trained method's file against its PyTorch model, and whether it is pure INT4."""
    lines = []
    for method, t in trained.items():
        pure = inspect_onnx(files[f"{method}_int4"]).is_pure_int4
        lines.append(
            f"{LABELS[method]}: ONNX vs the trained PyTorch model: mean cosine "
            f"{t.onnx_vs_torch[0]:.6f}, worst {t.onnx_vs_torch[1]:.6f}; pure INT4: "
            f"{'yes' if pure else 'no'}"
        )
    return lines


def write(job, rows: dict, paths: dict, latency: tuple[dict, dict], trained: dict) -> str:
    """results.md in ``job.out``; returns its text. ``job``: ``distill.Job``; ``latency``: the
    milliseconds at accuracy level 0 and 4 by row; ``trained``: ``distill.Trained`` by method,
    the first the headline."""
    cfg = job.cfg
    first = cfg.methods[0]
    acc0, acc4 = latency
    lines = (
        header(cfg, trained[first].seconds, len(job.cal_text), len(job.eval_text))
        + table_rows(rows, paths, acc0, acc4)
        + [""]
        + gaps(rows, ours_label(cfg, first))
        + parity(trained, job.files)
    )
    text = "\n".join(lines) + "\n"
    write_atomic(job.out / "results.md", text)
    return text
