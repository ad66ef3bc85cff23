"""Decoders in onnxruntime-genai, alone: the benchmark suite's genai section from the command line.

    python benchmarks/bench_genai.py [--small] [--hidden 2048] [--contexts 128 512 1024] [--reps 3]

Same as ``python -m benchmarks --only genai`` (``genai.py`` says what it measures: the model
builder's INT4 file vs ours fused and plain, with and without a LoRA adapter, the KV cache's
worth, tokens/s against the bandwidth floor, and the export cost of a ~1B decoder), with the
settings as flags; prints the section's targets and tables as markdown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent)
)  # run as a script: the package beside it

from benchmarks import genai, report_genai
from benchmarks.common import Log, machine, machine_line


def main(argv=None) -> None:
    d = genai.Settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="hidden 512, 8 / 2 heads")
    ap.add_argument("--hidden", type=int, default=d.hidden)
    ap.add_argument("--layers", type=int, default=d.layers)
    ap.add_argument("--heads", type=int, default=d.heads)
    ap.add_argument("--kv-heads", type=int, default=d.kv_heads)
    ap.add_argument("--vocab", type=int, default=d.vocab)
    ap.add_argument("--contexts", type=int, nargs="+", default=list(d.contexts))
    ap.add_argument(
        "--no-cache-context", type=int, default=d.no_cache_context, help="one of --contexts"
    )
    ap.add_argument("--new", type=int, default=d.new)
    ap.add_argument("--reps", type=int, default=d.reps)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument(
        "--large",
        type=int,
        nargs=4,
        default=list(d.large),
        metavar=("LAYERS", "HIDDEN", "MLP", "VOCAB"),
        help="the decoder whose export is timed",
    )
    a = ap.parse_args(argv)
    if a.small:
        a.hidden, a.heads, a.kv_heads = 512, 8, 2
    try:
        s = genai.Settings(
            hidden=a.hidden,
            layers=a.layers,
            heads=a.heads,
            kv_heads=a.kv_heads,
            vocab=a.vocab,
            contexts=tuple(a.contexts),
            no_cache_context=a.no_cache_context,
            new=a.new,
            reps=a.reps,
            threads=a.threads,
            large=tuple(a.large),
        )
    except ValueError as e:
        ap.error(str(e))
    with tempfile.TemporaryDirectory(prefix="bench-genai-") as tmp:
        r = genai.run(s, Path(tmp), Log())
    print(f"Machine: {machine_line(machine())}\n")
    print("| target | measured | verdict |\n| --- | --- | --- |")
    for row in report_genai.targets(r, lambda p: "n/a" if p is None else ("PASS" if p else "FAIL")):
        print("| " + " | ".join(row) + " |")
    print("\n" + "\n".join(report_genai.genai_md(r)))


if __name__ == "__main__":
    main()
