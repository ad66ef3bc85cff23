"""The genai section's part of the report: its targets and its tables."""

from __future__ import annotations

from .common import fmt_bytes

PEER = {
    "builder": "builder",
    "builder-sym": "builder",
    "ours": "builder",
    "ours-plain": "builder",
    "builder-lora": "builder-lora",
    "ours-lora": "builder-lora",
    "ours-lora-int": "builder-lora",
}
LABEL = {
    "builder": "model builder",
    "builder-sym": "model builder, symmetric (its default)",
    "ours": "ours, fused (`gqa`)",
    "ours-plain": "ours, `plain`",
    "builder-lora": "model builder + LoRA (unmerged)",
    "ours-lora": "ours + the same LoRA, folded (`gqa`)",
    "ours-lora-int": "ours + a LoRA trained with integer zeros, folded",
}
BIG = 2048  # the size the decode targets are stated for; below it node count, not weights, decides


def _ratios(r: dict, name: str, peer: str, metric: str = "decode_ms") -> dict[str, float]:
    return {c: v / r[metric][peer][c] for c, v in r[metric][name].items()}


TARGETS = (  # (file, its peer, what is timed, the target, whether it holds)
    (
        "ours",
        "builder",
        "decode_ms",
        "onnxruntime-genai decode, ours (fused) / model builder's file <= 1.1x",
        lambda x: x <= 1.1,
    ),
    (
        "ours-lora",
        "builder-lora",
        "decode_ms",
        "decode with a LoRA adapter, ours (folded) / the builder's (a branch) < 1x",
        lambda x: x < 1,
    ),
    (
        "ours",
        "builder",
        "prefill_ms",
        "onnxruntime-genai prefill, ours (fused) / model builder's file <= 1.05x",
        lambda x: x <= 1.05,
    ),
)


def targets(r: dict, verdict) -> list[tuple[str, str, str]]:
    rows = []
    big = r["settings"]["hidden"] >= BIG
    for name, peer, metric, label, holds in TARGETS:
        ratios = _ratios(r, name, peer, metric)
        worst = max(ratios, key=ratios.get)
        each = ", ".join(f"{c}: {v:.2f}x" for c, v in ratios.items())
        text = f"worst {ratios[worst]:.2f}x (context {worst}); {each}"
        if not big:
            text = f"{text} (hidden {r['settings']['hidden']} < {BIG}: not judged)"
        rows.append((label, text, verdict(holds(ratios[worst]) if big else None)))
    ctx = str(r["settings"]["no_cache_context"])
    speedup = r["no_cache_ms"][ctx] / r["decode_ms"]["ours"][ctx]
    judged = int(ctx) >= 512
    rows.append(
        (
            "KV cache vs re-running the prefix, ours (fused), context >= 512: >= 10x",
            f"{speedup:.1f}x at context {ctx}" + ("" if judged else " (context < 512: not judged)"),
            verdict(speedup >= 10 if judged else None),
        )
    )
    return rows


def genai_md(r: dict) -> list[str]:
    s, v = r["settings"], r["versions"]
    setup = (
        f"Llama-shaped fp32 source, hidden {s['hidden']}, {s['layers']} layers, {s['heads']} heads "
        "/ "
        f"{s['kv_heads']} kv heads, vocabulary {s['vocab']}; INT4 g32 asymmetric, accuracy level "
        "4, `lm_head` "
        f"float in every file; ours quantized by RTN. onnxruntime-genai {v['onnxruntime_genai']} "
        "(onnxruntime "
        f"{v['onnxruntime']}, transformers {v['transformers']}), {s['threads']} intra-op "
        f"thread(s), {s['new']} "
        f"new tokens per run; medians of {s['reps']} interleaved rounds. CPU flags: "
        f"{r['cpu_flags']}."
    )
    floor = (
        "Tokens/s = 1000 / decode ms; floor tokens/s = measured bandwidth / bytes a step reads "
        "(the file's "
        "initializers, an embedding table as one row, + the fp32 KV cache at that context). "
        "Bandwidth "
        f"{r['bandwidth'] / 1e9:.1f} GB/s ({s['threads']} thread(s), measured in the same rounds). "
        "Each file is "
        "compared with its builder peer: the plain builder file, or the builder's file with the "
        "adapter."
    )
    head = (
        "| context | file | nodes | decode ms/token | vs peer | prefill ms | vs peer | tokens/s | "
        "floor tokens/s "
        "| of the floor |"
    )
    out = [setup, "", floor, "", head, "| --- " * 10 + "|"]
    for c in map(str, s["contexts"]):
        for name, dec in r["decode_ms"].items():
            out.append(_row(r, name, c, dec[c]))
    ctx = str(s["no_cache_context"])
    reads = ", ".join(f"{k} {fmt_bytes(b)}" for k, b in r["weight_bytes"].items())
    kv = ", ".join(f"{fmt_bytes(b)} at {c}" for c, b in r["kv_bytes"].items())
    cached, uncached = r["decode_ms"]["ours"][ctx], r["no_cache_ms"][ctx]
    no_cache = (
        "Without a KV cache (our `export_onnx` file, onnxruntime, one forward over the "
        f"{ctx}-token prefix "
        f"+ 1 per token): {uncached:.1f} ms per token against {cached:.2f} ms with the cache "
        "(ours, fused): "
        f"**{uncached / cached:.1f}x**."
    )
    sym = ", ".join(f"{c}: {x:.2f}x" for c, x in _ratios(r, "builder-sym", "builder").items())
    grid = (
        "The builder's own default grid is symmetric (`is_symmetric=true`: MatMulNBits without "
        "zero points, "
        f"an implicit 8); its file decodes at {sym} the asymmetric one's time on this CPU. Every "
        "other file "
        f"here is asymmetric, the grid QA-LoRA's fold and our quantizers use."
    )
    out += ["", grid, "", f"Bytes a step reads: {reads}; KV cache {kv}.", "", no_cache, ""]
    out += [*adapter_md(r), "", *large_md(r["large"])]
    built = ", ".join(f"{k} {t:.0f}" for k, t in r["build_s"].items())
    return [*out, "", f"Seconds to write each folder: {built}."]


def _row(r: dict, name: str, c: str, decode: float) -> str:
    peer, prefill = PEER[name], r["prefill_ms"][name][c]
    floor = r["bandwidth"] / (r["weight_bytes"][name] + r["kv_bytes"][c])  # tokens/s
    return (
        f"| {c} | {LABEL[name]} | {r['nodes'][name]} | {decode:.2f} | "
        f"{decode / r['decode_ms'][peer][c]:.2f}x | "
        f"{prefill:.1f} | {prefill / r['prefill_ms'][peer][c]:.2f}x | {1000 / decode:.1f} | "
        f"{floor:.1f} | "
        f"{1000 / decode / floor:.0%} |"
    )


def adapter_md(r: dict) -> list[str]:
    def each(name: str, peer: str) -> str:
        return ", ".join(f"{c}: {x:.2f}x" for c, x in _ratios(r, name, peer).items())

    branch = ", ".join(f"{n} {op}" for op, n in sorted(r["builder_lora_ops"].items()))
    route = (
        f"With an adapter (rank {r['settings']['rank']} on q, k, v, o, gate, up, down; B drawn "
        "nonzero): the "
        "builder's `adapter_path` reads the PEFT LoRA folder with `peft` and writes the adapter "
        "into "
        f"`model.onnx` as an unmerged branch ({branch}: per layer an A and a B projection, INT4 "
        "like the base, "
        f"the LoRA scale folded into B, and an Add) and no longer fuses q/k/v; the folder holds "
        f"{', '.join(r['builder_lora_files'])}: no separate `.onnx_adapter` file, so `og.Adapters` "
        "/ "
        f"`set_active_adapter` play no part, and another adapter means another folder."
    )
    ours = (
        "Ours compiles the same adapter as QA-LoRA and folds it into the INT4 weights (`split`: "
        "integer zero "
        f"points + a per-group correction). Decode, ours / the builder's, by context: "
        f"{each('ours-lora', 'builder-lora')}. The branch costs the builder "
        f"{each('builder-lora', 'builder')} "
        f"over its plain file; the fold costs ours {each('ours-lora', 'ours')} over our plain "
        "file. An adapter "
        'trained with integer zero points (QA-LoRA `zero_point="int"`: its rounding is not a '
        "LoRA, so PEFT "
        f"and the builder cannot take it) folds into the base's graph, no correction: "
        f"{each('ours-lora-int', 'builder-lora')} the builder's time with its adapter."
    )
    return [route, "", ours]


def large_md(r: dict) -> list[str]:
    if "error" in r:
        return [
            f"Export cost: the child process failed: `{r['error']}`",
            "",
            "```",
            r.get("stderr_tail", ""),
            "```",
        ]
    gib = 2**30
    peak = max(p["peak"] for p in r["phases"]) / gib
    text = (
        f"Export cost, a {r['params'] / 1e9:.2f}B-parameter Llama-shaped decoder (hidden "
        f"{r['hidden']}, "
        f"{r['layers']} layers, MLP {r['intermediate']}, vocabulary {r['vocab']}, random fp32 "
        "weights) through "
        "`compile` (QA-LoRA INT4 g32) -> `fold` -> `export_genai`, alone in a child process "
        f"({r['threads']} "
        f"threads): {r['wall_s']:.0f} s in all with start-up, folder "
        f"{fmt_bytes(r['folder_bytes'])}, peak "
        f"resident set (the process's own high-water mark, `VmHWM`) **{peak:.2f} GiB**; its "
        "`ru_maxrss` read "
        f"{r['ru_maxrss'] / gib:.2f} GiB, which on Linux keeps the parent's high-water mark across "
        "fork and exec."
    )
    rows = [
        f"| {p['phase']} | {p['s']:.1f} s | {p['rss'] / gib:.2f} GiB | {p['peak'] / gib:.2f} GiB |"
        for p in r["phases"]
    ]
    return [
        text,
        "",
        "| phase | time | resident after | peak so far |",
        "| --- | --- | --- | --- |",
        *rows,
    ]
