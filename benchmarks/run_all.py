"""Run every benchmark and write ``benchmarks/results/``: ``report.md``, PNG plots,
``results.json``.

    python -m benchmarks                 # everything (about 40 minutes on 2 cores)
    python -m benchmarks --quick         # the same code on small settings (a few minutes)
    python -m benchmarks --only speed,floor --out DIR
    python -m benchmarks --only genai --keep   # rerun one section, keep the others' numbers

Sections: 1 quality (MiniLM, bits x group, every method), 2 fold exactness, 3 size,
4 inference speed and the memory-bandwidth floor, 5 training cost, 6 compile cost,
7 decoders in onnxruntime-genai (ours vs its model builder, with a LoRA adapter, the KV
cache, the bandwidth floor, the export cost of a 1.1B decoder), 8 many fine-tunes over one
INT4 base (``bench_adapters``: decode with an adapter active, file sizes, memory per adapter).
A section that fails is reported as failed and the others still run; the report is
rewritten after every section, so an interrupted run leaves what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from lowrank_compiler.runtime.files import write_atomic

from . import bench_adapters, bench_fold, compile_cost, floor, genai, quality, speed, training
from .common import START, Log, machine

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Scale:
    quality: quality.Settings
    fold_steps: int
    speed: speed.Settings
    floor: floor.Settings
    training: training.Settings
    compile: compile_cost.Settings
    genai: genai.Settings
    adapters: bench_adapters.Settings


FULL = Scale(
    quality.Settings(),
    50,
    speed.Settings(),
    floor.Settings(),
    training.Settings(),
    compile_cost.Settings(),
    genai.Settings(),
    bench_adapters.Settings(),
)
QUICK = Scale(
    quality.Settings(
        bits=(4, 2), groups=(32, 128), steps=4, batch=8, eval_sentences=32, calibration_sentences=64
    ),
    10,
    speed.Settings(hidden=512, layers=1, repeats=(5, 5, 3, 2)),
    floor.Settings(hidden=1024, layers=1, repeats=5, bandwidth_bytes=1 << 28),
    training.Settings(sizes=(training.Size("~5M", 4, 256, 2048, 4, 64),), steps=2),
    compile_cost.Settings(hidden=512, layers=1, repeats=2),
    genai.Settings(
        hidden=512,
        layers=2,
        heads=8,
        kv_heads=2,
        contexts=(64, 256),
        no_cache_context=256,
        new=16,
        reps=2,
        bandwidth_bytes=1 << 28,
        large=(2, 512, 1280, 4000),
    ),
    bench_adapters.Settings(hidden=512, layers=2, adapters=2, rounds=3, our_rounds=5, context=64),
)
# the test's setting: every code path, smallest sizes
SMOKE = Scale(
    quality.Settings(
        bits=(4,),
        groups=(32,),
        steps=1,
        batch=2,
        eval_sentences=4,
        calibration_sentences=8,
        ort=False,
        onnx_check=False,
    ),
    1,
    speed.Settings(hidden=128, layers=1, shapes=((1, 4), (2, 8)), repeats=(2, 1), formats=("int",)),
    floor.Settings(hidden=128, layers=1, repeats=2, bandwidth_bytes=1 << 24, formats=("int",)),
    training.Settings(sizes=(training.Size("tiny", 1, 64, 256, 2, 16),), steps=1),
    compile_cost.Settings(hidden=128, layers=1, repeats=1),
    genai.Settings(
        hidden=128,
        layers=1,
        heads=2,
        kv_heads=1,
        vocab=320,
        contexts=(8, 16),
        no_cache_context=16,
        new=4,
        reps=1,
        threads=1,
        rank=4,
        bandwidth_bytes=1 << 24,
        large=(1, 256, 512, 1000),
    ),
    bench_adapters.Settings(
        hidden=256, layers=1, adapters=2, rounds=1, our_rounds=1, context=16, new=4, threads=1
    ),
)
SCALES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}
SECTIONS = ("quality", "fold", "speed", "floor", "training", "compile", "genai", "adapters")


def run_section(name: str, scale: Scale, work: Path, log):
    if name == "quality":
        return quality.run(scale.quality, work, log)
    if name == "fold":
        log(f"fold: GPT distilled {scale.fold_steps} steps per method, every fold form")
        return {"rows": bench_fold.measure(scale.fold_steps), "steps": scale.fold_steps}
    if name == "speed":
        return speed.run(scale.speed, work, log)
    if name == "floor":
        return floor.run(scale.floor, work, log)
    if name == "training":
        return training.run(scale.training, work, log)
    if name == "genai":
        return genai.run(scale.genai, work, log)
    if name == "adapters":
        return bench_adapters.run(scale.adapters, work, log)
    return compile_cost.run(scale.compile, work, log)


def write(result: dict, out: Path, name: str) -> None:
    """Draw section ``name``'s plot, then rewrite results.json and report.md."""
    from . import plots, report

    result["total_s"] = time.perf_counter() - START
    result["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    drawers = {
        "quality": plots.quality,
        "fold": lambda r, o: plots.fold(r["rows"], o),
        "speed": plots.speed,
        "floor": plots.floor,
        "training": plots.training,
        "compile": plots.compile_cost,
        "genai": plots.genai,
        "adapters": lambda r, o: None,  # a table, no plot
    }
    sec = result["sections"][name]
    if "result" in sec:
        try:
            made = drawers[name](sec["result"], out)
            if made:
                result["plots"].append(made)
        except Exception as e:  # a plot that fails must not take the numbers with it
            sec["plot_error"] = f"{type(e).__name__}: {e}"
    write_atomic(out / "results.json", json.dumps(result, indent=1, default=str) + "\n")
    try:
        text = report.markdown(result)
    except (
        Exception
    ):  # the numbers are safe in results.json; say what went wrong instead of stopping the run
        text = (
            "# Benchmark report\n\nWriting the report failed; the numbers are in "
            "results.json.\n\n```\n"
            f"{traceback.format_exc(limit=6)}```\n"
        )
    write_atomic(out / "report.md", text)


def keep_others(result: dict, path: Path, only: list[str]) -> None:
    """Put the sections (and plots) of an earlier ``results.json`` that this run does not rerun into
    ``result``; each keeps the command, setting and load average it was measured under."""
    from .report import PLOTS

    if not path.exists():
        return
    old = json.loads(path.read_text())
    for name, sec in old["sections"].items():
        if name not in only:
            sec.setdefault(
                "run",
                {
                    "command": old["command"],
                    "scale": old["scale"],
                    "machine": old["machine"],
                    "load_average_start": old["machine"].get("load_average_start"),
                    "load_average_end": old.get("load_average_end"),
                },
            )
            result["sections"][name] = sec
            if PLOTS.get(name) in old.get("plots", []):
                result["plots"].append(PLOTS[name])


def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.quick:
        args.scale = "quick"
    scale = _scale(ap, args)
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(args.quiet)
    command = "python -m benchmarks " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    result = {
        "machine": machine(),
        "scale": args.scale,
        "command": command.strip(),
        "sections": {},
        "plots": [],
    }
    if args.keep:
        keep_others(result, out / "results.json", only)
    log(f"benchmarks ({args.scale}): {', '.join(only)} -> {out}")
    run_sections(result, only, scale, out, log)
    log(f"report: {out / 'report.md'}")
    return 0 if all("result" in s for s in result["sections"].values()) else 1


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="small settings, a few minutes (same as --scale quick)"
    )
    ap.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="full",
        help="full (default), quick, or smoke (tests)",
    )
    ap.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections of {','.join(SECTIONS)}",
    )
    ap.add_argument(
        "--out", default=str(DEFAULT_OUT), help="where report.md, the plots and results.json go"
    )
    ap.add_argument(
        "--quality-steps",
        type=int,
        help="training steps per trained quality point (overrides the scale)",
    )
    ap.add_argument(
        "--quality-sentences", type=int, help="held-out sentences the quality section scores on"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the sections of the results.json already in --out that this run does not run",
    )
    return ap


def _scale(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Scale:
    """``--scale``'s settings with the quality section's overrides."""
    scale = SCALES[args.scale]
    if args.quality_steps is not None:
        if args.quality_steps < 1:
            ap.error(f"--quality-steps must be at least 1, got {args.quality_steps}")
        scale = dataclasses.replace(
            scale, quality=dataclasses.replace(scale.quality, steps=args.quality_steps)
        )
    if args.quality_sentences is not None:
        if args.quality_sentences < 2:
            ap.error(f"--quality-sentences must be at least 2, got {args.quality_sentences}")
        scale = dataclasses.replace(
            scale, quality=dataclasses.replace(scale.quality, eval_sentences=args.quality_sentences)
        )
    return scale


def run_sections(result: dict, only: list[str], scale: Scale, out: Path, log) -> None:
    """Run each section in turn into ``result``; a failure is recorded and the next runs; the
    report is rewritten after each."""
    with tempfile.TemporaryDirectory(prefix="lowrank-bench-") as tmp:
        for name in only:
            t = time.perf_counter()
            try:
                result["sections"][name] = {"result": run_section(name, scale, Path(tmp), log)}
            except Exception as e:
                log(f"{name} FAILED: {type(e).__name__}: {e}")
                result["sections"][name] = {
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(limit=8),
                }
            result["sections"][name]["seconds"] = time.perf_counter() - t
            log(f"{name} done in {result['sections'][name]['seconds']:.0f} s")
            gc.collect()
            write(result, out, name)
