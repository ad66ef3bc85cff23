"""The LLM job's report: ``results.md`` (the table, the goals met or not, one held-out prompt's
continuation per row, the machine), ``results.json``, ``perplexity.png`` (perplexity against file
size) and ``best/``, the deployable folder of the best INT4 row; all written whole.

matplotlib is imported only when the figure is drawn (``plotting``); without it the report says
so.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections import Counter
from pathlib import Path

import onnx

from ...runtime.files import write_atomic
from .code_search_report import machine
from .llm_methods import BY_KEY
from .plotting import png, pyplot

PPL_GOAL = 1.03  # ours within 3% of fp32 + LoRA's perplexity
SPEED_GOAL = 1.02  # our integer-zero file decodes within 2% of the builder's base INT4 file


def _ratio(rows, key):
    ceiling = next((r["perplexity"] for r in rows if r["key"] == "lora-torch"), None)
    return None if ceiling is None else {r["key"]: r["perplexity"] / ceiling for r in rows}.get(key)


def _cell(value, fmt, unit=""):
    return "-" if value is None else format(value, fmt) + unit


def stand_ins(rows: list[dict]) -> dict[str, str]:
    """Each stand-in's ``how`` -> its mark in the table (``*``, ``**``, ...), in row order."""
    hows = [r["how"] for r in rows if r.get("how", "").startswith("stand-in")]
    return {h: "\\*" * (i + 1) for i, h in enumerate(dict.fromkeys(hows))}  # markdown-escaped


def table(rows: list[dict]) -> list[str]:
    marks = stand_ins(rows)
    lines = [
        "| row | perplexity | vs fp32 + LoRA | decode ms/token | file | weights | trainable "
        "| train step | train memory (peak above the libraries) | tokens: genai = ours = PyTorch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    mib = 2**20
    for r in rows:
        check = "-"
        if r.get("ours"):
            og = r.get("tokens_og_eq_ours")
            check = ("yes" if r["tokens_ours_eq_torch"] else "no") + (
                "" if og is None else (", genai yes" if og else ", genai no")
            )
        lines.append(
            f"| {r['label']}{' ' + marks[r['how']] if r.get('how') in marks else ''} "
            f"| {r['perplexity']:.3f} | {_cell(_ratio(rows, r['key']), '.3f', 'x')} "
            f"| {_cell(r.get('decode_ms'), '.3f')} "
            f"| {_cell(r.get('size') and r['size'] / mib, '.2f', ' MiB')} "
            f"| {_cell(r.get('weights') and r['weights'] / mib, '.3f', ' MiB')} "
            f"| {r.get('trainable', 0):,} | {_cell(r.get('step_ms'), '.0f', ' ms')} "
            f"| {_cell(r.get('peak_rss') and r['peak_rss'] / mib, '.1f', ' MiB')} | {check} |"
        )
    return lines


def goals(rows: list[dict], seconds: float) -> list[str]:
    by = {r["key"]: r for r in rows}
    ours = [r for r in rows if r.get("ours")]
    out = ["", "Goals:"]
    if ours and "lora-torch" in by:
        best = min(ours, key=lambda r: r["perplexity"])
        ratio = _ratio(rows, best["key"])
        peers = [by[k] for k in ("lora-builder", "lora-gptq", "qlora-fold") if k in by]
        below = all(best["perplexity"] < p["perplexity"] for p in peers)
        scores = ", ".join(format(p["perplexity"], ".3f") for p in peers)
        met = "met" if ratio <= PPL_GOAL else "not met"
        out.append(
            f"- ours within {PPL_GOAL}x of fp32 + LoRA: {met} ({best['label']}: {ratio:.3f}x); "
            f"below every peer INT4 route ({scores}): {'met' if below else 'not met'}"
        )
    if "qalora-int-fold" in by and "base-builder" in by and by["base-builder"].get("decode_ms"):
        ours, base = by["qalora-int-fold"], by["base-builder"]
        pairs = zip(ours["decode_rounds"], base["decode_rounds"], strict=True)
        speed = statistics.median(a / b for a, b in pairs)  # round by round: drift cancels
        same = graph_signature(ours["folder"]) == graph_signature(base["folder"])
        out.append(
            f"- our integer-zero file decodes within {SPEED_GOAL}x of the builder's base INT4 "
            f"file: {'met' if speed <= SPEED_GOAL else 'not met'} ({speed:.3f}x); the same graph "
            f"(node types and initializer shapes): {'yes' if same else 'no'}"
        )
    met = "met" if seconds <= 900 else "not met"
    out.append(f"- the job in 15 minutes: {met} ({seconds / 60:.1f} min)")
    return out


def graph_signature(folder) -> tuple:
    """What decides a decoder's speed: its node types (counted) and initializers' types and
    shapes (sorted)."""
    graph = onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False).graph
    nodes = sorted(Counter(n.op_type for n in graph.node).items())
    tensors = sorted((t.data_type, tuple(t.dims)) for t in graph.initializer)
    return nodes, tensors


def figure(rows: list[dict], title: str) -> bytes | None:
    """Perplexity against file size, one marker per deployed row; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(11, 5))
    markers = iter("osD^vP*Xhp<>")
    for r in rows:
        if not r.get("size"):
            continue
        ax.scatter(
            r["size"] / 2**20,
            r["perplexity"],
            marker=next(markers, "o"),
            s=60,
            color="tab:green" if r.get("ours") else "tab:blue",
            label=f"{r['label']} ({r['perplexity']:.2f})",
        )
    ceiling = next((r["perplexity"] for r in rows if r["key"] == "lora-torch"), None)
    if ceiling:
        ax.axhline(ceiling, color="gray", ls="--", lw=1, label=f"fp32 + LoRA ({ceiling:.2f})")
    ax.set_yscale("log")  # the untuned base sits an order of magnitude above the tuned rows
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("held-out perplexity, log scale (green: ours)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title, fontsize=9)
    return png(fig)


def write(job, rows: list[dict], seconds: float) -> dict:
    cfg, data = job.cfg, job.data
    model = cfg.model or "stories260K"
    head = (
        f"{model} on Python docstrings and comments, INT{cfg.bits} g{cfg.group_size}, rank "
        f"{cfg.rank}; every trained row: the learning rate of "
        f"{', '.join(f'{r:g}' for r in cfg.lrs)} (LR-QAT's times "
        f"{BY_KEY['lrqat'].lr_scale:g}: its adapter is in grid units) "
        f"with the lowest perplexity after {cfg.lr_steps} steps on set-aside windows, then "
        f"{cfg.steps} steps in all of {cfg.batch} windows (AdamW, the rate decaying linearly to 0; "
        f"trained scales at {cfg.scale_lr:g}). {data.summary}. Perplexity: every "
        "position of the held-out windows, deployed rows from their folder's own logits "
        "(onnxruntime, accuracy level 0); decode: onnxruntime-genai, accuracy level 4, median of "
        f"{cfg.latency_rounds} interleaved rounds of {cfg.decode_tokens} tokens (a ratio: the "
        "median of the rounds' ratios). Whole job: "
        f"{seconds / 60:.1f} min on {machine()}."
    )
    notes = [f"{m} {how}" for how, m in stand_ins(rows).items()]
    continuation = [
        "",
        f"Held-out prompt: {job.tokenizer.decode(data.prompt[0], skip_special_tokens=True)!r}",
    ]
    continuation += [f"- {r['label']}: {r['continuation']!r}" for r in rows]
    lines = [
        head,
        "",
        *table(rows),
        *[f"\n{n}" for n in notes],
        *goals(rows, seconds),
        *continuation,
    ]
    deployed = [r for r in rows if r.get("folder")]
    best = min(deployed, key=lambda r: r["perplexity"]) if deployed else None
    if best:
        target = job.out / "best"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(best["folder"], target)
        lines.append(f"\nbest/: {best['label']} (perplexity {best['perplexity']:.3f})")
    png = figure(rows, f"{model}: held-out perplexity vs file size")
    lines.append("figure: perplexity.png" if png else "no figure: matplotlib is not installed")
    text = "\n".join(lines) + "\n"
    if png:
        write_atomic(job.out / "perplexity.png", png)
    write_atomic(job.out / "results.md", text)
    write_atomic(job.out / "results.json", json.dumps({"rows": rows}, indent=2, default=str) + "\n")
    return {"text": text, "best": best["key"] if best else None}
