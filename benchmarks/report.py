"""The markdown report: the targets with PASS / FAIL from the measured numbers, then one
part per section. A section that failed or was not run says so; the rest still report.

The verdicts are strict: a ratio target is judged on the worst case over every shape,
accuracy level and thread count measured for it.
"""

from __future__ import annotations

import math

from . import bench_adapters, report_genai
from .common import fmt_bytes, fmt_ms, machine_line

LEVELS = ("acc0", "acc4")


def _ok(result: dict, name: str):
    sec = result["sections"].get(name)
    return sec["result"] if sec and "result" in sec else None


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("**PASS**" if passed else "**FAIL**")


# --- targets -----------------------------------------------------------------------


def targets(result: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows."""
    rows = []
    speed, floor = _ok(result, "speed"), _ok(result, "floor")
    if speed:
        rows += _vs_ort_rows(speed["latency_s"])
    rows += _speedup_rows(result, speed, floor)
    if floor:
        rows += _floor_rows(result, floor)
    comp = _ok(result, "compile")
    if comp:
        ratio = comp["ours_gbps"] / comp["ort_gbps"]
        rows.append(
            (
                "compile + fold throughput >= onnxruntime quantizer's (same weights)",
                f"{comp['ours_gbps']:.3f} vs {comp['ort_gbps']:.3f} GB/s: {ratio:.2f}x",
                _verdict(ratio >= 1),
            )
        )
    train = _ok(result, "training")
    if train:
        for label, method, step_bound, mem_bound in (
            ("QA-LoRA", "QA-LoRA (INT4 g32)", 1.5, 0.2),
            ("LR-QAT", "LR-QAT (INT4 g32)", 2.0, 0.3),
            ("LR-QAT + scales", "LR-QAT + scales (INT4 g32)", 2.0, 0.3),
        ):
            rows += _training_rows(train, label, method, step_bound, mem_bound)
    gen = _ok(result, "genai")
    if gen:
        rows += report_genai.targets(gen, _verdict)
    adapters = _ok(result, "adapters")
    if adapters:
        rows += bench_adapters.targets(adapters, _verdict)
    return rows


def _vs_ort_rows(lat: dict) -> list[tuple]:
    """Ours against onnxruntime's quantizer's graph, worst over every shape and level."""
    rows = []
    for name, bound, label in (
        ("ours-int", 1.05, "integer zeros"),
        ("ours-split", 1.2, "split"),
    ):
        ratios = {
            f"{shape} {lv}": lat[f"{name}/{lv}"][shape] / lat[f"ort-rtn/{lv}"][shape]
            for lv in LEVELS
            for shape in lat["fp32"]
            if f"{name}/{lv}" in lat
        }
        if ratios:
            worst = max(ratios, key=ratios.get)
            geo = math.exp(sum(map(math.log, ratios.values())) / len(ratios))
            rows.append(
                (
                    f"INT4 latency, ours ({label}) / onnxruntime quantizer's graph <= {bound}x",
                    f"worst {ratios[worst]:.2f}x ({worst}), geometric mean {geo:.2f}x over "
                    f"{len(ratios)} shape x level{_control(lat)}",
                    _verdict(ratios[worst] <= bound),
                )
            )
    return rows


def _speedups(speed: dict | None, floor: dict | None) -> tuple[dict, dict]:
    """INT4's speed-up over fp32 at batch 1, hidden >= 2048: (decode, one token; prefill,
    several), each {run: fp32 time / INT4 time}."""
    decode, prefill = {}, {}
    if speed and speed["settings"]["hidden"] >= 2048:
        lat = speed["latency_s"]
        for shape in lat["fp32"]:
            if shape.startswith("1x"):
                for name in ("ours-int", "ours-split"):
                    if f"{name}/acc4" in lat:
                        (decode if shape == "1x1" else prefill)[f"{name} {shape}"] = (
                            lat["fp32"][shape] / lat[f"{name}/acc4"][shape]
                        )
    if floor and floor["settings"]["hidden"] >= 2048:
        r = floor["rows"]
        for name in ("ours-int", "ours-split"):
            if f"{name}/acc4@1" in r and "fp32@1" in r:
                decode[f"{name} 1x1 (hidden {floor['settings']['hidden']})"] = (
                    r["fp32@1"]["latency_s"] / r[f"{name}/acc4@1"]["latency_s"]
                )
    return decode, prefill


def _speedup_rows(result: dict, speed: dict | None, floor: dict | None) -> list[tuple]:
    """The 2x-over-fp32 targets at batch 1 (decode and prefill), judged on the worst speed-up."""
    rows = []
    decode, prefill = _speedups(speed, floor)
    for label, speedups, note in (
        (
            "batch 1, one token (decode), hidden >= 2048: INT4 (acc 4) >= 2x faster than fp32",
            decode,
            "",
        ),
        (
            "batch 1, 16 and 128 tokens (prefill), hidden >= 2048: INT4 (acc 4) >= 2x faster than "
            "fp32",
            prefill,
            _compute_bound_note(_machine_of(result, "speed")),
        ),
    ):
        if speedups:
            worst = min(speedups, key=speedups.get)
            rows.append(
                (
                    label,
                    f"worst speed-up {speedups[worst]:.2f}x ({worst}); best "
                    f"{max(speedups.values()):.2f}x{note}",
                    _verdict(speedups[worst] >= 2),
                )
            )
    if not (decode or prefill) and speed:
        rows.append(
            (
                "batch 1, hidden >= 2048: INT4 >= 2x faster than fp32",
                "not measured: hidden < 2048 here",
                _verdict(None),
            )
        )
    return rows


def _floor_rows(result: dict, floor: dict) -> list[tuple]:
    """Batch-1 INT4 (level 4) against the memory-bandwidth floor, worst over files and threads."""
    ours = {
        k: v
        for k, v in floor["rows"].items()
        if v["model"].startswith("ours") and v["level"] == "4"
    }
    if not ours:
        return []
    worst = max(ours, key=lambda k: ours[k]["ratio"])
    big = floor["weight_bytes"].get("ours-int", 0) > 2 * _cache_bytes(_machine_of(result, "floor"))
    note = "" if big else " (INT4 weights under twice the L3 cache: partly a cache floor)"
    return [
        (
            "batch-1 INT4 at accuracy level 4 within 2x of the memory-bandwidth floor",
            f"worst {ours[worst]['ratio']:.2f}x the floor "
            f"({worst.replace('@', ', threads ')}){note}",
            _verdict(ours[worst]["ratio"] <= 2),
        )
    ]


def _training_rows(
    train: dict, label: str, method: str, step_bound: float, mem_bound: float
) -> list[tuple]:
    """A method's step time and frozen base against LoRA over fp32, per model size (none if not
    measured)."""
    steps, mems = [], []
    for size in train["sizes"]:
        m = size["methods"]
        if method not in m:
            return []
        lora, ours = m["LoRA over fp32"], m[method]
        steps.append((size["size"]["label"], ours["step_s"] / lora["step_s"]))
        mems.append((size["size"]["label"], ours["base_bytes"] / lora["base_bytes"]))
    return [
        (
            f"{label} step <= {step_bound}x LoRA-over-fp32 step",
            ", ".join(f"{k}: {v:.2f}x" for k, v in steps),
            _verdict(all(v <= step_bound for _, v in steps)),
        ),
        (
            f"{label} frozen base memory <= {mem_bound}x fp32",
            ", ".join(f"{k}: {v:.3f}x" for k, v in mems),
            _verdict(all(v <= mem_bound for _, v in mems)),
        ),
    ]


def _machine_of(result: dict, name: str) -> dict:
    """The machine section ``name`` ran on: its own run's when it was kept from an earlier one."""
    return result["sections"].get(name, {}).get("run", {}).get("machine") or result["machine"]


def _cache_bytes(machine: dict) -> int:
    text = str(machine.get("l3_cache", "")).upper()
    try:
        if text.endswith("K"):
            return int(text[:-1]) * 1024
        if text.endswith("M"):
            return int(text[:-1]) * 2**20
    except ValueError:
        pass
    return 32 * 2**20


# --- sections ----------------------------------------------------------------------


def quality_md(r: dict) -> list[str]:
    s = r["settings"]
    pts = [p for p in r["points"] if "mean" in p]
    out = [
        f"MiniLM-L6 ({r['targeted_layers']} linear layers), {r['sentences']} held-out sentences; "
        "trained "
        f"methods: {s['steps']} steps x {s['batch']} sentences of distillation each (QA-LoRA, "
        "LR-QAT: at every "
        "point; QLoRA: once, merged to every point); mean / worst cosine to the fp32 embeddings, "
        "and bits per "
        f"weight in brackets. Mean training time per run: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in r["train_s"].items())
        + ".",
        "",
        "| method | bits | " + " | ".join(f"g{g}" for g in s["groups"]) + " |",
        "| --- | --- |" + " --- |" * len(s["groups"]),
    ]
    out += _quality_rows(r["points"], s["groups"])
    if r.get("ort_layers") is not None and r["ort_layers"] != r["targeted_layers"]:
        out += [
            "",
            f"onnxruntime's quantizer turns {r['ort_layers']} of the {r['targeted_layers']} linear "
            "layers into "
            "MatMulNBits: it quantizes MatMul nodes only, and leaves the rest (the pooler's Gemm) "
            "in fp32, "
            f"which its bits per weight include.",
        ]
    return out + _gap_closed(pts) + _onnx_checks(pts)


def _quality_rows(points: list[dict], groups: list[int]) -> list[str]:
    """A table row per method and bit width: a cell per group size (``-``: not measured)."""
    out = []
    methods = list(dict.fromkeys(p["method"] for p in points))
    for method in methods:
        for bits in sorted({p["bits"] for p in points if p["method"] == method}, reverse=True):
            cells = []
            for g in groups:
                p = next(
                    (
                        p
                        for p in points
                        if p["method"] == method and p["bits"] == bits and p["group"] == g
                    ),
                    None,
                )
                if p is None:
                    cells.append("-")
                elif "error" in p:
                    cells.append(f"did not run: {p['error'][:60]}")
                else:
                    cells.append(f"{p['mean']:.4f} / {p['worst']:.4f} ({p['bpw']:.2f})")
            if set(cells) != {"-"}:
                out.append(f"| {method} | {bits} | " + " | ".join(cells) + " |")
    return out


def _gap_closed(pts: list[dict]) -> list[str]:
    """The share of RTN's gap to fp32 that ours (float zeros) closes, per bits and group."""
    gaps = []
    for p in pts:
        if p["method"] == "QA-LoRA float zeros (ours)":
            rtn = next(
                (
                    q
                    for q in pts
                    if q["method"] == "RTN" and q["bits"] == p["bits"] and q["group"] == p["group"]
                ),
                None,
            )
            if rtn and rtn["mean"] < 1:
                gaps.append(
                    f"INT{p['bits']} g{p['group']} "
                    f"{(p['mean'] - rtn['mean']) / (1 - rtn['mean']):.0%}"
                )
    if not gaps:
        return []
    return [
        "",
        "Share of the gap between RTN and fp32 closed by ours (float zeros), (ours - RTN) / (1 "
        "- RTN): " + ", ".join(gaps) + ".",
    ]


def _onnx_checks(pts: list[dict]) -> list[str]:
    """The exported ONNX files against the PyTorch models they came from."""
    checks = [p for p in pts if "onnx_vs_torch" in p]
    if not checks:
        return []
    return [
        "",
        "ONNX export vs the PyTorch model it came from (worst cosine): "
        + ", ".join(
            f"{p['method']} INT{p['bits']} g{p['group']} {p['onnx_vs_torch']:.6f}" for p in checks
        )
        + ".",
    ]


def fold_md(r: dict) -> list[str]:
    out = [
        f"A GPT (4 layers, width 256) distilled {r['steps']} steps toward its fp32 self after INT4 "
        "g32 "
        "quantization (rank 16); the deployed (folded / merged) model's logits vs the trained "
        "model's on held-out "
        f"tokens.",
        "",
        "| trained model, fold | logits max rel error | worst layer (probe) |",
        "| --- | --- | --- |",
    ]
    out += [f"| {name} | {err:.2e} | {worst:.2e} |" for name, err, worst in r["rows"]]
    return out


def size_md(speed: dict | None, quality: dict | None) -> list[str]:
    rows = []
    for label, sizes in (
        (f"Llama-shaped {speed['settings']['hidden']}" if speed else "", speed and speed["sizes"]),
        ("MiniLM", quality and quality["minilm_files"]),
    ):
        if not sizes or "fp32" not in sizes:
            continue
        ref = sizes["fp32"][1]
        for name, (whole, nbytes, weights) in sizes.items():
            rows.append(
                f"| {label}: {name} | {fmt_bytes(whole)} | {fmt_bytes(nbytes)} | "
                f"{8 * nbytes / weights:.2f} | "
                f"{nbytes / ref:.3f}x |"
            )
    if not rows:
        return ["Not measured in this setting."]
    return [
        "Linear-layer bytes: what the kernels read for the weights (codes, scales, zero points, "
        "split "
        "correction; biases left out). Bits per weight = those bytes x 8 / weights.",
        "",
        "| model | file | linear-layer weights | bits per weight | linear bytes vs fp32 |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ]


def speed_md(r: dict) -> list[str]:
    lat = r["latency_s"]
    shapes = list(lat["fp32"])
    out = [
        f"Llama-shaped, hidden {r['settings']['hidden']}, {r['settings']['layers']} layers "
        f"({r['params'] / 1e6:.0f}M parameters), every linear INT4 g32; onnxruntime CPU and "
        "PyTorch eager, "
        f"{r['ort_threads']} thread(s); median of interleaved rounds "
        f"({', '.join(f'{sh}: {n}' for sh, n in zip(shapes, r['settings']['repeats']))}).",
        "",
        "| runner | "
        + " | ".join(f"b x s = {sh}" for sh in shapes)
        + " | time / onnxruntime quantizer's (same level) | speed-up over fp32 ONNX |",
        "| --- |" + " --- |" * (len(shapes) + 2),
    ]
    for k, row in lat.items():
        level = k.split("/")[1] if "/" in k else None
        ref = f"ort-rtn/{level}" if level else None
        vs_ort = (
            " / ".join(f"{row[sh] / lat[ref][sh]:.2f}x" for sh in shapes) if ref in lat else "-"
        )
        vs_fp32 = (
            "-" if k == "fp32" else " / ".join(f"{lat['fp32'][sh] / row[sh]:.2f}x" for sh in shapes)
        )
        out.append(
            f"| {k} | "
            + " | ".join(fmt_ms(row[sh]) for sh in shapes)
            + f" | {vs_ort} | {vs_fp32} |"
        )
    return out


def floor_md(r: dict, machine: dict) -> list[str]:
    bw = r["bandwidth"]
    out = [
        f"Llama-shaped, hidden {r['settings']['hidden']}, {r['settings']['layers']} layer(s), "
        "batch 1 x seq 1. "
        f"Read bandwidth measured in the same run, interleaved: "
        + ", ".join(f"{float(v) / 1e9:.1f} GB/s with {t} thread(s)" for t, v in bw.items())
        + f" (L3 cache {machine.get('l3_cache')}).",
        "",
        "| file, accuracy level | threads | weight bytes | floor | latency | latency / floor | "
        "weight bytes / latency (share of the bandwidth) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, row in r["rows"].items():
        nbytes = r["weight_bytes"][row["model"]]
        out.append(
            f"| {k.split('@')[0]} | {row['threads']} | {fmt_bytes(nbytes)} | "
            f"{fmt_ms(row['floor_s'])} | "
            f"{fmt_ms(row['latency_s'])} | {row['ratio']:.2f}x | "
            f"{nbytes / row['latency_s'] / 1e9:.1f} GB/s "
            f"({1 / row['ratio']:.0%}) |"
        )
    return out


def training_md(r: dict) -> list[str]:
    out = [
        "Each method trains in a fresh process; steps alternate between the processes; medians. "
        "Model built = "
        "the process's resident set once the model is compiled, minus the process after its "
        "imports; peak = its "
        "resident-set high-water mark over the training steps; footprint = peak - the process "
        "after its imports.",
        "",
        "| model | method | step | vs LoRA | frozen base | vs fp32 base | model built | peak RSS | "
        "footprint | vs LoRA |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    sources = set()
    for size in r["sizes"]:
        m = size["methods"]
        lora = m["LoRA over fp32"]
        sz = size["size"]
        for name, v in m.items():
            sources.add(v["peak_source"])
            foot = (v["peak_kib"] - v["rss_imports_kib"]) * 1024
            lora_foot = (lora["peak_kib"] - lora["rss_imports_kib"]) * 1024
            out.append(
                f"| {sz['label']} ({v['params'] / 1e6:.1f}M, b{sz['batch']} x s{sz['seq']}) | "
                f"{name} | "
                f"{fmt_ms(v['step_s'])} | {v['step_s'] / lora['step_s']:.2f}x | "
                f"{fmt_bytes(v['base_bytes'])} | "
                f"{v['base_bytes'] / lora['base_bytes']:.3f}x | "
                f"{fmt_bytes((v['rss_model_kib'] - v['rss_imports_kib']) * 1024)} | "
                f"{fmt_bytes(v['peak_kib'] * 1024)} | "
                f"{fmt_bytes(foot)} | {foot / lora_foot:.2f}x |"
            )
    return out + ["", f"Peak measured as: {', '.join(sorted(sources))}."]


def _control(lat: dict) -> str:
    """The A/A control: onnxruntime's file in a second session against the first."""
    ratios = [
        lat[f"ort-rtn-again/{lv}"][shape] / lat[f"ort-rtn/{lv}"][shape]
        for lv in LEVELS
        for shape in lat["fp32"]
        if f"ort-rtn-again/{lv}" in lat
    ]
    if not ratios:
        return ""
    return (
        "; the same file against itself (A/A control) measured "
        f"{min(ratios):.2f}x-{max(ratios):.2f}x "
        f"in this run"
    )


def _compute_bound_note(machine: dict) -> str:
    """Why INT4 cannot halve fp32's time once a call has many tokens, on a CPU without int8 dot
    products (the flags of the machine the section ran on; none recorded: no claim)."""
    if not machine.get("cpu_flags"):
        return ""
    flags = set(machine["cpu_flags"].split())
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return ""
    return (
        "; with many tokens a call is compute-bound and this CPU has no int8 dot-product "
        "instructions "
        "(no AVX-VNNI / AVX512-VNNI / AMX), so accuracy level 4 computes no faster than fp32"
    )


def compile_md(r: dict) -> list[str]:
    return [
        f"Llama-shaped, {r['params'] / 1e6:.1f}M parameters; {r['our_layers']} layers quantized by "
        "ours, "
        f"{r['ort_layers']} MatMuls by onnxruntime; {fmt_bytes(r['fp32_weight_bytes'])} of fp32 "
        "weights; "
        f"torch threads {r['threads']}; medians of {r['settings']['repeats']} alternating rounds.",
        "",
        "| step | time | throughput |",
        "| --- | --- | --- |",
        f"| ours: compile (trace, quantize, insert QA-LoRA) | {r['compile_s']:.2f} s | "
        f"{r['fp32_weight_bytes'] / r['compile_s'] / 1e9:.3f} GB/s |",
        f"| ours: fold (copy, fold, probe) | {r['fold_s']:.2f} s | "
        f"{r['fp32_weight_bytes'] / r['fold_s'] / 1e9:.3f} GB/s |",
        f"| ours: compile + fold | {r['ours_s']:.2f} s | {r['ours_gbps']:.3f} GB/s |",
        '| ours: compile without tracing (`trace_mode="modules"`) + fold | '
        f"{r['compile_untraced_s'] + r['fold_s']:.2f} s | "
        f"{r['untraced_gbps']:.3f} GB/s |",
        f"| onnxruntime MatMulNBitsQuantizer.process() | {r['ort_s']:.2f} s | {r['ort_gbps']:.3f} "
        "GB/s |",
        "",
        f"Ours / theirs throughput: {r['ours_gbps'] / r['ort_gbps']:.2f}x (without tracing "
        f"{r['untraced_gbps'] / r['ort_gbps']:.2f}x). Both start from a captured graph: ours "
        "traces the "
        "PyTorch model inside compile (counted above); onnxruntime's quantizer reads an fp32 ONNX "
        "file, whose "
        f"export is not counted"
        + (
            f" ({r['fp32_export_s']:.1f} s for this model, once)."
            if r.get("fp32_export_s")
            else "."
        ),
    ]


PLOTS = {
    "quality": "quality_vs_bpw.png",
    "fold": "fold_error.png",
    "speed": "speed.png",
    "floor": "floor.png",
    "training": "training.png",
    "compile": "compile.png",
    "genai": "genai.png",
    "adapters": None,
}
SECTIONS = [
    ("quality", "1. Quality", quality_md),
    ("fold", "2. Fold exactness", fold_md),
    ("size", "3. Size", None),
    ("speed", "4. Inference speed", speed_md),
    ("floor", "4b. Against the memory-bandwidth floor", None),
    ("training", "5. Training cost", training_md),
    ("compile", "6. Compile cost", compile_md),
    ("genai", "7. Decoders in onnxruntime-genai", report_genai.genai_md),
    ("adapters", "8. Many fine-tunes over one INT4 base", lambda r: r["text"].splitlines()),
]


def markdown(result: dict) -> str:
    m = result["machine"]
    ran = {
        k: v for k, v in result["sections"].items() if "run" not in v
    }  # kept sections name their own run
    out = [
        "# Benchmark report",
        "",
        f"Machine: {machine_line(m)}. Load average (1, 5, 15 min) at the start "
        f"{_load(m.get('load_average_start'))}, "
        f"at the end {_load(result.get('load_average_end'))}: other work on the machine makes "
        "absolute times "
        f"noisier; every comparison below ran both sides in this run, interleaved, as medians.",
        "",
        f"Command: `{result['command']}` (setting `{result['scale']}`); wall time "
        f"{result.get('total_s', 0) / 60:.1f} min"
        + (
            " (" + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in ran.items()) + ")"
            if ran
            else ""
        )
        + ".",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "| --- | --- | --- |",
    ]
    out[-4:-4] = _kept(result)
    out += [f"| {t} | {v} | {d} |" for t, v, d in targets(result)]
    for key, title, fn in SECTIONS:
        out += ["", f"## {title}", ""]
        if key == "size":
            speed, quality = _ok(result, "speed"), _ok(result, "quality")
            out += (
                size_md(speed, quality)
                if speed or quality
                else ["Not measured (needs the speed or quality section)."]
            )
            continue
        sec = result["sections"].get(key)
        if sec is None:
            out.append("Not run in this invocation.")
        elif "error" in sec:
            out.append(f"Failed after {sec['seconds']:.0f} s: `{sec['error']}`")
        else:
            out += (
                floor_md(sec["result"], _machine_of(result, key))
                if key == "floor"
                else fn(sec["result"])
            )
            if PLOTS[key] in result.get("plots", []):
                out += ["", f"![{title}]({PLOTS[key]})"]
            if "plot_error" in sec:
                out += ["", f"(The plot failed: `{sec['plot_error']}`.)"]
    return "\n".join(out) + "\n"


def _kept(result: dict) -> list[str]:
    """A line per earlier run whose sections this report kept (``--keep``)."""
    runs: dict[str, list[str]] = {}
    for name, sec in result["sections"].items():
        if "run" in sec:
            r = sec["run"]
            other = r.get("machine") and machine_line(r["machine"]) != machine_line(
                result["machine"]
            )
            key = (
                f"`{r['command']}` (setting `{r['scale']}`; load average at its start "
                f"{_load(r.get('load_average_start'))}, at its end "
                f"{_load(r.get('load_average_end'))}"
                + (f"; machine: {machine_line(r['machine'])}" if other else "")
                + ")"
            )
            runs.setdefault(key, []).append(name)
    return [
        f"Kept from an earlier run, {key}: {', '.join(names)}.\n" for key, names in runs.items()
    ]


def _load(v) -> str:
    return "?" if not v else " / ".join(f"{x:.1f}" for x in v)
