"""The report's pictures (matplotlib, no display needed). Each function writes one PNG
under a temporary name and renames it, and returns the file name, or None when the
section has nothing to draw."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = {32: "o", 64: "s", 128: "^"}


def _save(fig, out: Path, name: str) -> str:
    tmp = out / f".{name}.tmp.png"
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out / name)
    return name


def quality(result: dict, out: Path) -> str | None:
    points = [p for p in result["points"] if "mean" in p]
    if not points:
        return None
    methods = list(dict.fromkeys(p["method"] for p in points))
    panels = [("every bit width", points)]
    high = [p for p in points if p["bits"] >= 3]
    if len(high) < len(points) and high:
        panels.append(("3 and 4 bits", high))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels):
        for i, method in enumerate(methods):
            mine = sorted((p for p in pts if p["method"] == method), key=lambda p: p["bpw"])
            if not mine:
                continue
            color = f"C{i}"
            ax.plot(
                [p["bpw"] for p in mine],
                [p["mean"] for p in mine],
                color=color,
                lw=1.2,
                alpha=0.6,
                label=method,
            )
            for p in (
                mine
            ):  # earlier methods drawn larger: points that coincide (RTN, int zeros) stay visible
                ax.scatter(
                    p["bpw"],
                    p["mean"],
                    color=color,
                    marker=MARKERS.get(p["group"], "D"),
                    s=90 - 10 * i,
                    zorder=3 + i,
                )
        ax.set_xlabel("bits per weight (codes, scales, zero points, correction)")
        ax.set_ylabel("mean cosine to fp32 (held-out sentences)")
        ax.set_title(f"{title} (marker: o g32, s g64, ^ g128)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("MiniLM-L6: quality vs bits per weight")
    return _save(fig, out, "quality_vs_bpw.png")


def fold(rows: list, out: Path) -> str | None:
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r[0] for r in rows]
    errs = [max(r[1], 1e-12) for r in rows]
    ax.barh(names, errs, color=["C2" if e < 1e-4 else "C3" for e in errs])
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("max |y_fold - y_trained| / max |y_trained| (logits)")
    ax.set_title("Fold exactness: deployed model vs trained model")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, "fold_error.png")


def speed(result: dict, out: Path) -> str | None:
    lat = result["latency_s"]
    shapes = list(next(iter(lat.values())).keys())
    runners = [k for k in lat if not k.endswith("/acc0")]
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 4.2), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        values = [lat[k][shape] * 1000 for k in runners]
        ax.bar(range(len(runners)), values, color=[f"C{i}" for i in range(len(runners))])
        ax.set_xticks(
            range(len(runners)),
            [k.replace("/acc4", "") for k in runners],
            rotation=45,
            ha="right",
            fontsize=8,
        )
        ax.set_title(f"batch x seq = {shape}")
        ax.set_ylabel("median latency, ms")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"onnxruntime CPU, hidden {result['settings']['hidden']}, INT4 at accuracy level 4, "
        f"{result['ort_threads']} thread(s)"
    )
    return _save(fig, out, "speed.png")


def floor(result: dict, out: Path) -> str | None:
    rows = [r for r in result["rows"].values() if r["level"] != "0"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['model']} ({r['threads']} thr)" for r in rows]
    ax.barh(
        labels,
        [r["ratio"] for r in rows],
        color=["C0" if r["model"] != "fp32" else "C7" for r in rows],
    )
    ax.axvline(1, color="k", lw=1)
    ax.axvline(2, color="C3", lw=1, ls="--", label="target: 2x the floor")
    ax.invert_yaxis()
    ax.set_xlabel("batch-1 latency / (weight bytes / measured bandwidth)")
    ax.set_title(f"Memory-bandwidth floor, hidden {result['settings']['hidden']}, batch 1 x seq 1")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, "floor.png")


def training(result: dict, out: Path) -> str | None:
    sizes = result["sizes"]
    if not sizes:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    methods = list(sizes[0]["methods"])
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [j + i * width for j in range(len(sizes))]
        axes[0].bar(xs, [s["methods"][m]["step_s"] for s in sizes], width, label=m, color=f"C{i}")
        axes[1].bar(
            xs,
            [s["methods"][m]["base_bytes"] / 2**20 for s in sizes],
            width,
            label=m,
            color=f"C{i}",
        )
    for ax, label in zip(axes, ("median step time, s", "frozen linear weights, MiB")):
        ax.set_xticks(
            [j + width * (len(methods) - 1) / 2 for j in range(len(sizes))],
            [s["size"]["label"] for s in sizes],
        )
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Training cost: one step (forward, backward, AdamW) and the frozen base")
    return _save(fig, out, "training.png")


def compile_cost(result: dict, out: Path) -> str | None:
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = ["ours: compile + fold", "onnxruntime quantizer"]
    ax.barh(labels, [result["ours_gbps"], result["ort_gbps"]], color=["C0", "C1"])
    ax.invert_yaxis()
    ax.set_xlabel("GB/s of fp32 weights quantized")
    ax.set_title(f"Compile cost, {result['params'] / 1e6:.0f}M-parameter model, INT4 g32")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, "compile.png")


def genai(result: dict, out: Path) -> str | None:
    decode = result["decode_ms"]
    if not decode:
        return None
    contexts = sorted({int(c) for v in decode.values() for c in v})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, v) in enumerate(decode.items()):
        ms = [v[str(c)] for c in contexts]
        axes[0].plot(contexts, ms, marker="o", color=f"C{i}", label=name)
        floor = [
            result["bandwidth"] / (result["weight_bytes"][name] + result["kv_bytes"][str(c)])
            for c in contexts
        ]
        axes[1].plot(
            contexts,
            [1000 / m / f for m, f in zip(ms, floor)],
            marker="o",
            color=f"C{i}",
            label=name,
        )
    axes[0].set_ylabel("decode ms/token (median)")
    axes[1].set_ylabel("tokens/s / bandwidth-floor tokens/s")
    axes[1].set_ylim(0, 1)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (prompt tokens)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    s = result["settings"]
    fig.suptitle(
        f"onnxruntime-genai decode, hidden {s['hidden']}, {s['layers']} layers, INT4 g32, "
        f"{s['threads']} thread(s)"
    )
    return _save(fig, out, "genai.png")
