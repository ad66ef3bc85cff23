"""Many fine-tunes over one INT4 base in onnxruntime-genai: decode speed with an adapter active,
adapter file sizes, memory per loaded adapter.

    python -m benchmarks.bench_adapters [--hidden 2048] [--layers 4] [--adapters 4] [--rounds 5]

One Llama-shaped model as section 7 (``genai_models``: hidden 2048, 4 layers, 16 / 4 heads, MLP
5632, vocabulary 512), five folders, two threads each:

- swappable: our RTN INT4 g32 with ``adapter_inputs="zeros"`` (accuracy level 0), run alone and
  with each of ``--adapters`` fine-tunes active (QA-LoRA rank 16, integer zero points, B drawn as
  after training, folded with ``zeros="round"``, ``export_adapter``; one ``og.Adapters``);
- constant: the same base without the inputs (what the inputs cost at level 0);
- folded: the first fine-tune in its own file, level 0 (the tokens the adapter must give);
- constant-acc4: the base at accuracy level 4, where onnxruntime ignores overridden zero points;
- builder-lora: onnxruntime-genai's model builder, INT4 block 32 asymmetric, with a rank-16
  LoRA (``adapter_path``: the adapter as unmerged MatMuls over its INT4 base), level 4, and
  ``builder-lora-acc0`` (the same at level 0);
- folded-acc4: the first fine-tune in its own level-4 file.

Then our runtime (``DecoderSession``) at level 4, the route that keeps the base's speed: the
constant-acc4 base alone (``ours-acc4``) against each adapter loaded into it, each in its own
session (``ours-acc4+tN``, ``load_adapter``'s session route), with the RSS each one adds.

Each round every configuration once, interleaved (a fresh generator, a random prompt of
``--context`` tokens, ``--new`` tokens; decode ms/token = the median of steps 2..new); medians
of the rounds; ratios are the medians of the rounds' ratios. Memory: the process RSS after
loading each adapter into one ``og.Adapters``, and (our loop, run in a fresh process so that
freed memory is not reused) into one ``DecoderSession``. CPU flags printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

import lowrank_compiler as lrc
from lowrank_compiler.app.jobs.llm_deploy import at_level

from . import genai_models as gm
from .common import cpu_flags
from .genai_run import one_run


def fine_tune(model, seed: int, train_scales: bool = False):
    """A fine-tune's stand-in: QA-LoRA (integer zeros) rank 16 with B drawn, folded round;
    ``train_scales``: each group's scale gain drawn too."""
    m = copy.deepcopy(model)
    policy = lrc.Policy(
        method="qalora", bits=4, group_size=32, rank=16, zero_point="int", train_scales=train_scales
    )
    lrc.compile(m, policy, example_inputs=(gm._ids(m.config.vocab_size),))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.3, generator=g)  # moves zero points by whole steps, as training
            elif name.endswith("scale_gain"):
                p.normal_(0, 0.02, generator=g)  # scales within a few percent, as training
    return lrc.fold(m, zeros="round")


def build(args, work: Path, log) -> tuple[dict, list[Path], dict]:
    model = gm.make_model(args.hidden, args.layers, 16, 4, 512, 4 * args.context)
    hf = work / "hf"
    gm.save_with_tokenizer(model, hf)
    base = gm.ours_int4(model, "rtn")
    names = ("swappable", "constant", "folded", "constant-acc4", "folded-acc4")
    folders = {n: work / n for n in names}
    log("  our base, three ways")
    lrc.export_genai(
        base, folders["swappable"], tokenizer=str(hf), accuracy_level=0, adapter_inputs="zeros"
    )
    lrc.export_genai(base, folders["constant"], tokenizer=str(hf), accuracy_level=0)
    lrc.export_genai(base, folders["constant-acc4"], tokenizer=str(hf), accuracy_level=4)
    adapters = []
    for i in range(args.adapters):
        log(f"  fine-tune {i + 1} of {args.adapters}: export_adapter")
        tuned = fine_tune(model, seed=10 + i)
        adapters.append(
            lrc.export_adapter(tuned, folders["swappable"], work / f"t{i}.onnx_adapter")
        )
        if i == 0:
            lrc.export_genai(tuned, folders["folded"], tokenizer=str(hf), accuracy_level=0)
            lrc.export_genai(tuned, folders["folded-acc4"], tokenizer=str(hf), accuracy_level=4)
    log("  the model builder with a rank-16 LoRA (adapter_path)")
    lora = gm.plain_lora_adapter(gm.with_adapter(model, 16), work / "lora")
    folders["builder-lora"] = work / "builder-lora"
    gm.build_builder(hf, folders["builder-lora"], lora)
    folders["builder-lora-acc0"] = work / "builder-lora-acc0"
    shutil.copytree(folders["builder-lora"], folders["builder-lora-acc0"])
    model_file = folders["builder-lora-acc0"] / "model.onnx"
    at_level(model_file, model_file, 0)
    log("  a zeros+scales base and a fine-tune with trained scales (the adapter's size)")
    scales_base = lrc.export_genai(
        base,
        work / "scales-base",
        tokenizer=str(hf),
        accuracy_level=0,
        adapter_inputs="zeros+scales",
    )
    scaled = fine_tune(model, seed=99, train_scales=True)
    with_scales = lrc.export_adapter(scaled, scales_base, work / "scales.onnx_adapter")
    for folder in folders.values():
        gm.set_threads(folder, args.threads)
    sizes = {
        "adapter_with_scales": with_scales.stat().st_size,
        "adapter": adapters[0].stat().st_size,
        "adapter_tensors": len(json.loads(Path(f"{adapters[0]}.json").read_text())["parameters"]),
        "lora_safetensors": (lora / "adapter_model.safetensors").stat().st_size,
        "base_onnx": sum(p.stat().st_size for p in folders["swappable"].glob("model.onnx*")),
    }
    return folders, adapters, sizes


def measure(args, folders: dict, adapters: list[Path], log) -> dict:
    """Interleaved rounds: decode and prefill ms of every configuration; the RSS per adapter."""
    import onnxruntime_genai as og

    models = {n: og.Model(str(f)) for n, f in folders.items() if n != "folded-acc4"}  # ours only
    before = rss_bytes()
    loaded = og.Adapters(models["swappable"])
    rss = []
    for i, path in enumerate(adapters):
        loaded.load(str(path), f"t{i}")
        rss.append(rss_bytes() - before)
    runs = {name: (m, None) for name, m in models.items()}
    runs.update({f"swappable+t{i}": (models["swappable"], f"t{i}") for i in range(len(adapters))})
    rng = np.random.default_rng(0)
    decode, prefill = {k: [] for k in runs}, {k: [] for k in runs}
    tokens = {}
    for r in range(-1, args.rounds):  # round -1 warms up
        log(f"  round {r + 1} of {args.rounds}" if r >= 0 else "  warm-up round")
        prompt = rng.integers(4, 512, args.context).tolist()
        for name, (model, adapter) in runs.items():
            toks: list[int] = []
            pre, dec = one_run(
                model, prompt, args.new, None if adapter is None else (loaded, adapter), toks
            )
            if r >= 0:
                decode[name].append(1e3 * dec)
                prefill[name].append(1e3 * pre)
            tokens[name] = toks
    return {
        "decode_ms": {k: statistics.median(v) for k, v in decode.items()},
        "prefill_ms": {k: statistics.median(v) for k, v in prefill.items()},
        "decode_rounds": decode,
        "adapter_rss_bytes": rss,
        "same_tokens_as_folded": tokens["swappable+t0"] == tokens["folded"],
    }


def our_run(session, prompt: list[int], new: int, adapter=None) -> tuple[float, list[int]]:
    """(median decode seconds per token over steps 2..new, the new tokens) of one
    ``DecoderSession.generate``; a step's time is the gap between the streamer's calls."""
    stamps: list[float] = []
    ids = torch.tensor([prompt])
    out = session.generate(
        ids,
        max_new_tokens=new,
        adapter=adapter,
        eos_token_id=[],
        streamer=lambda _: stamps.append(time.perf_counter()),
    )
    return statistics.median(np.diff(stamps)[1:].tolist()), out[0, len(prompt) :].tolist()


def measure_ours(args, folders: dict, adapters: list[Path], log) -> dict:
    """Our loop at level 4: the base alone and each adapter in its own session, interleaved."""
    base = lrc.runtime.load(folders["constant-acc4"])
    before, rss = rss_bytes(), []
    for i, path in enumerate(adapters):
        base.load_adapter(path, f"t{i}", route="session")
        rss.append(rss_bytes() - before)
    runs = {
        "ours-acc4": (base, None),
        "ours-folded-acc4": (lrc.runtime.load(folders["folded-acc4"]), None),
    }
    runs.update({f"ours-acc4+t{i}": (base, f"t{i}") for i in range(len(adapters))})
    rng = np.random.default_rng(1)
    decode: dict[str, list[float]] = {k: [] for k in runs}
    tokens = {}
    for r in range(-1, args.our_rounds):
        log(f"  our loop: round {r + 1} of {args.our_rounds}" if r >= 0 else "  our loop: warm-up")
        prompt = rng.integers(4, 512, args.context).tolist()
        for name, (session, adapter) in runs.items():
            time.sleep(0.1)  # the previous run's threads stop spinning
            dec, tokens[name] = our_run(session, prompt, args.new, adapter)
            if r >= 0:
                decode[name].append(1e3 * dec)
    return {
        "decode_ms": {k: statistics.median(v) for k, v in decode.items()},
        "decode_rounds": decode,
        "session_rss_bytes": rss,
        "same_tokens_as_folded": tokens["ours-acc4+t0"] == tokens["ours-folded-acc4"],
    }


def in_child(fn, *args):
    """``fn(*args, print)`` in a fresh process: its RSS counts only what it loads."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, (*args, print))


def rss_bytes() -> int:
    """The process's resident memory now (Linux ``/proc``; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def ratio(rounds: dict, a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(rounds[a], rounds[b], strict=True))


def report(result: dict, args) -> str:
    d, rounds, sizes = result["decode_ms"], result["decode_rounds"], result["sizes"]
    ours = result["ours"]
    active = [k for k in d if k.startswith("swappable+")]
    worst = max(ratio(rounds, k, "swappable") for k in active)
    lines = [
        f"hidden {args.hidden}, {args.layers} layers, INT4 g32, context {args.context}, "
        f"{args.new} new tokens, {args.rounds} interleaved rounds, {args.threads} threads; "
        f"CPU flags: {cpu_flags()}",
        "",
        "| configuration | decode ms/token | prefill ms |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {k} | {d[k]:.3f} | {result['prefill_ms'][k]:.1f} |" for k in d]
    lines += [f"| {k} (our loop) | {v:.3f} | |" for k, v in ours["decode_ms"].items()]
    mib = 2**20
    in_session = [k for k in ours["decode_ms"] if "+t" in k]
    worst_ours = max(ratio(ours["decode_rounds"], k, "ours-acc4") for k in in_session)
    lines += [
        "",
        f"- an adapter active vs the base alone (level 0): worst of {len(active)} adapters "
        f"{worst:.3f}x (goal <= 1.02x); the inputs themselves: "
        f"{ratio(rounds, 'swappable', 'constant'):.3f}x the constant base",
        f"- the builder's LoRA route (adapter_path: the LoRA written into model.onnx as INT4 "
        f"branches, not a swappable adapter) vs the base speed class: builder-lora (level 4) "
        f"{ratio(rounds, 'builder-lora', 'constant-acc4'):.3f}x our constant level-4 base; "
        f"level 0: {ratio(rounds, 'builder-lora-acc0', 'constant'):.3f}x our constant level-0 base",
        f"- level 0 against level 4 (the price of a swappable base): "
        f"{ratio(rounds, 'swappable', 'constant-acc4'):.3f}x",
        f"- tokens with adapter t0 active = its folded file's: {result['same_tokens_as_folded']}",
        f"- adapter file {sizes['adapter'] / 2**10:.1f} KiB ({sizes['adapter_tensors']} tensors); "
        f"the base's model.onnx "
        f"{sizes['base_onnx'] / mib:.1f} MiB (1/{sizes['base_onnx'] / sizes['adapter']:.0f}); "
        f"with trained scales too {sizes['adapter_with_scales'] / 2**10:.1f} KiB "
        f"(1/{sizes['base_onnx'] / sizes['adapter_with_scales']:.1f}); "
        f"the rank-16 LoRA's safetensors {sizes['lora_safetensors'] / mib:.1f} MiB",
        "- RSS after loading each adapter: "
        + ", ".join(f"{b / mib:.1f} MiB" for b in result["adapter_rss_bytes"]),
        f"- our loop at level 4, each adapter in its own session: worst of {len(in_session)} "
        f"adapters {worst_ours:.3f}x the base alone (goal <= 1.02x); tokens = its folded level-4 "
        f"file's: {ours['same_tokens_as_folded']}; RSS after loading each: "
        + ", ".join(f"{b / mib:.1f} MiB" for b in ours["session_rss_bytes"]),
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Settings:
    """The section's sizes (``python -m benchmarks`` section 8; the command line's flags)."""

    hidden: int = 2048
    layers: int = 4
    adapters: int = 4
    rounds: int = 5
    our_rounds: int = 15  # a run of our loop is ~0.2 s: more rounds
    context: int = 128
    new: int = 32
    threads: int = 2


def run(settings: Settings, work: Path, log) -> dict:
    """Build, measure and report (section 8 of ``python -m benchmarks``)."""
    folders, adapters, sizes = build(settings, work / "adapters", log)
    result = {**measure(settings, folders, adapters, log), "sizes": sizes}
    result["ours"] = in_child(measure_ours, settings, folders, adapters)
    result["settings"] = asdict(settings)
    result["text"] = report(result, settings)
    return result


def targets(result: dict, verdict) -> list[tuple[str, str, str]]:
    """The section's rows of the report's targets table."""
    ours, sizes, rounds = result["ours"], result["sizes"], result["decode_rounds"]
    active = [k for k in ours["decode_ms"] if "+t" in k]
    worst = max(ratio(ours["decode_rounds"], k, "ours-acc4") for k in active)
    share = sizes["adapter"] / sizes["base_onnx"]
    og = [k for k in result["decode_ms"] if k.startswith("swappable+")]
    og_worst = max(ratio(rounds, k, "swappable") for k in og)
    og_level = ratio(rounds, "swappable", "constant-acc4")
    return [
        (
            "onnxruntime-genai: an adapter active <= 1.02x the level-0 base it swaps over",
            f"worst of {len(og)}: {og_worst:.3f}x",
            verdict(og_worst <= 1.02),
        ),
        (
            "onnxruntime-genai: the swappable (level-0) base <= 1.02x the level-4 base",
            f"{og_level:.3f}x (onnxruntime ignores zero points fed as inputs at level 4)",
            verdict(og_level <= 1.02),
        ),
        (
            "decode with an adapter active <= 1.02x the base alone (level 4, our loop)",
            f"worst of {len(active)}: {worst:.3f}x; tokens = folded file's: "
            f"{ours['same_tokens_as_folded']}",
            verdict(worst <= 1.02 and ours["same_tokens_as_folded"]),
        ),
        (
            "adapter file <= 1/16 of the INT4 base (g32, zero points only)",
            f"1/{1 / share:.0f}",
            verdict(share <= 1 / 16),
        ),
    ]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in fields(Settings):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default)
    ap.add_argument("--out", default=None, help="write results.json and report.md here")
    args = ap.parse_args(argv)
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    with tempfile.TemporaryDirectory() as tmp:
        result = run(settings, Path(tmp), print)
    print(result["text"])
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "report.md").write_text(result["text"] + "\n")
    return result


if __name__ == "__main__":
    main()
