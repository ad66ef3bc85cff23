"""The code-search job's report: ``results.md`` (the table, the goal, the machine) and
``recall.png`` (recall@1 per row), both written whole or not at all.

matplotlib is imported only when the figure is drawn (``plotting``); without it the report says
so and the job goes on.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from ...runtime.files import write_atomic
from .plotting import png, pyplot

COSINE_GOAL = (
    0.99999  # ONNX vs PyTorch embeddings of an exactly deployed model, every held-out text
)
GOAL_POINTS = 0.01  # the best exact deployment within 1 point of recall@1 of fp32 + LoRA
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def machine() -> str:
    """CPU, the flags that decide the int8 kernels, threads, Python, load."""
    cpu, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import onnxruntime

    have, threads = [f for f in CPU_FLAGS if f in flags], torch.get_num_threads()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"{cpu}, {os.cpu_count()} cores (flags: "
        f"{', '.join(have) or 'none of ' + '/'.join(CPU_FLAGS)}), "
        f"torch {torch.__version__} with {threads} thread{'s' if threads != 1 else ''}, "
        f"onnxruntime {onnxruntime.__version__}, "
        f"Python {platform.python_version()}{load}"
    )


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _ms(latency: dict, level: int, row: dict) -> str:
    value = latency.get(level, {}).get(row.get("file"))
    return "-" if value is None else f"{value:.2f} ms"


def _line(r: dict, latency: dict) -> str:
    trained = (
        (_mib(r["frozen_bytes"]), _mib(r["peak_rss"]), f"{r['lr']:g}") if "lr" in r else ("-",) * 3
    )
    cells = (
        f"**{r['label']}**" if r.get("ours") else r["label"],
        r["engine"],
        f"{r['recall@1']:.3f}",
        f"{r['mrr@10']:.3f}",
        _mib(r.get("size")),
        _ms(latency, 0, r),
        _ms(latency, 4, r),
        *trained,
    )
    return "| " + " | ".join(cells) + " |"


def table(rows: list[dict], latency: dict) -> list[str]:
    return [
        (
            "| model | computed by | recall@1 | MRR@10 | file size | latency b1, acc0 | latency "
            "b1, acc4 | "
            "frozen base (training) | peak RSS (training) | lr |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ] + [_line(r, latency) for r in rows]


def mark_ours(rows: list[dict]) -> dict | None:
    """The exactly deployed row with the best recall@1 (marked ``ours``), or None."""
    exact = [r for r in rows if r.get("exact")]
    if not exact:
        return None
    best = max(exact, key=lambda r: (r["recall@1"], r["mrr@10"]))
    best["ours"] = True
    return best


def goal(rows: list[dict]) -> list[str]:
    """Our best exact deployment against fp32 + LoRA and fine-tune-then-GPTQ (within a point of
    each, where measured) and the QLoRA merge (at least)."""
    by_file = {r.get("file"): r for r in rows}
    best = next((r for r in rows if r.get("ours")), None) or mark_ours(rows)
    upper, qlora = by_file.get("lora-0"), by_file.get("qlora")
    if best is None or upper is None or qlora is None:
        return [
            "goal not checked: it needs the lora, qlora and an exactly deployed row (qalora, "
            "qalora-int)"
        ]
    within = [(upper, "fp32 + LoRA merged")] + (
        [(by_file["lora-1"], "fine-tune then GPTQ")] if "lora-1" in by_file else []
    )
    margin = best["recall@1"] - qlora["recall@1"]
    met = (
        all(r["recall@1"] - best["recall@1"] <= GOAL_POINTS + 1e-9 for r, _ in within)
        and margin >= 0
    )
    against = ", ".join(
        f"{100 * (best['recall@1'] - r['recall@1']):+.1f} points against {name} "
        f"({r['recall@1']:.3f})"
        for r, name in within
    )
    return [
        (
            f"goal {'met' if met else 'NOT met'}: our best exact deployment ({best['label']}) "
            "reaches recall@1 "
            f"{best['recall@1']:.3f}: {against} (the goal is at most 1 point below each) and "
            f"{100 * margin:+.1f} "
            f"points against QLoRA merged + requantized ({qlora['recall@1']:.3f}; the goal is at "
            "least equal)"
        )
    ]


def parity(rows: list[dict], n_eval: int) -> list[str]:
    out = []
    for r in rows:
        if "onnx_vs_torch" in r:
            q, d = r["onnx_vs_torch"]
            ok = min(q, d) >= COSINE_GOAL
            out.append(
                f"{r['label']}: onnxruntime vs the trained PyTorch model, worst cosine over the "
                f"{n_eval} "
                f"held-out queries {q:.6f}, documents {d:.6f} (goal >= {COSINE_GOAL}: "
                f"{'met' if ok else 'NOT met'})"
            )
    return out


def figure(rows: list[dict], title: str) -> bytes | None:
    """recall@1 per row as a PNG; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.4))
    labels = [r["label"] for r in rows][::-1]
    values = [r["recall@1"] for r in rows][::-1]
    colors = [
        "tab:green" if r.get("ours") else "tab:gray" if r["engine"] == "PyTorch" else "tab:blue"
        for r in rows
    ][::-1]
    ax.barh(labels, values, color=colors)
    for y, v in enumerate(values):
        ax.text(v + 0.003, y, f"{v:.3f}", va="center", fontsize=8)
    ax.set_xlabel("recall@1, held-out pairs (blue: onnxruntime; gray: PyTorch; green: ours)")
    ax.set_xlim(0, min(1.0, max(values) + 0.08))
    ax.set_title(title, fontsize=9)
    return png(fig)


GRID_NOTE = " (LR-QAT: ten times those, its adapter being in grid units)"


def write(job, rows: list[dict], latency: dict, seconds: tuple[float, float]) -> str:
    """results.md and recall.png into the output directory; returns the text. ``seconds``: the
    job's (wall, CPU) time: on a shared machine the CPU time over the threads is what the job
    would take on cores of its own."""
    cfg, data = job.cfg, job.data
    head = (
        f"MiniLM-L6 code search, INT{cfg.bits} g{cfg.group_size}, rank {cfg.rank}; every tuned "
        "row: the "
        "learning rate of "
        f"{', '.join(f'{r:g}' for r in cfg.lrs)}{GRID_NOTE if 'lrqat' in cfg.methods else ''} "
        f"with the best MRR@10 after {cfg.lr_steps} "
        f"steps on set-aside training pairs, then {cfg.steps} steps of {cfg.batch} pairs "
        "(contrastive, in-batch "
        f"negatives, temperature 0.05, AdamW); queries {cfg.query_tokens} tokens, documents "
        f"{cfg.doc_tokens}; "
        f"GPTQ calibrated on {min(cfg.calibration_docs, len(data.train))} training documents. "
        f"{data.summary}. "
        f"Each query ranks all {len(data.eval)} held-out documents. Latency: onnxruntime, batch 1 "
        "(one "
        f"document), one thread, median of {cfg.latency_runs} interleaved rounds, accuracy level 0 "
        "and 4 "
        f"(int8 activations). Whole job: {seconds[0] / 60:.1f} min ({seconds[1] / 60:.1f} "
        "CPU-minutes) on "
        f"{machine()}."
    )
    mark_ours(rows)
    lines = [head, "", *table(rows, latency), "", *goal(rows), *parity(rows, len(data.eval))]
    png = figure(rows, f"MiniLM-L6 code search, INT{cfg.bits} g{cfg.group_size}: recall@1")
    lines.append(
        "figure: recall.png"
        if png
        else "no figure: matplotlib is not installed (pip install "
        '"torch==2.13.0" ".[bench]" draws recall.png)'
    )
    text = "\n".join(lines) + "\n"
    if png:
        write_atomic(job.out / "recall.png", png)
    write_atomic(job.out / "results.md", text)
    return text
