"""7e. Export of a ~1B-parameter Llama-shaped decoder with the KV-cache path: time and peak memory.

    python -m benchmarks.genai_large --out DIR [--layers 22] [--hidden 2048] [--intermediate 5632]
                                     [--vocab 32000]

Runs in a process of its own (the genai section starts it) so that its peak resident set
counts this work only: the model built on the meta device and filled once in
fp32 (``bench_large.build``: TinyLlama-1.1B's shape by default, 32 heads / 4 kv heads, random
weights), ``compile`` (QA-LoRA INT4 g32, rank 16, every block linear), ``fold`` (split), the
trained model dropped, ``export_genai`` (fused attention, accuracy level 4) into ``DIR``.
Progress lines go to stderr; the last line on stdout is one JSON object with each phase's
seconds, the resident set after it and the peak so far.

The peak is the process's own high-water mark (``VmHWM``). ``ru_maxrss`` is recorded too, but
on Linux it keeps the parent's high-water mark across the fork and exec that start this
process (a benchmark run holding gigabytes would show as this export's peak).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

GiB = 2**30


def rss() -> int:
    """Resident bytes now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak() -> int:
    """Peak resident bytes of this process's own address space so far (VmHWM, in kB)."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the folder export_genai writes (must not exist)")
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args(argv)
    import torch

    import lowrank_compiler as lrc

    from .bench_large import build

    phases = [
        {"phase": "start (Python, torch, the package)", "s": 0.0, "rss": rss(), "peak": peak()}
    ]

    def phase(name, fn):
        started = time.perf_counter()
        out = fn()
        gc.collect()
        phases.append(
            {"phase": name, "s": time.perf_counter() - started, "rss": rss(), "peak": peak()}
        )
        print(
            f"  large export: {name}: {phases[-1]['s']:.1f} s, resident {rss() / GiB:.2f} GiB, "
            f"peak {peak() / GiB:.2f} GiB",
            file=sys.stderr,
            flush=True,
        )
        return out

    model = phase("build the fp32 model", lambda: build(args))
    params = sum(p.numel() for p in model.parameters())
    print(
        f"  large export: {params / 1e9:.2f}B parameters, {torch.get_num_threads()} threads",
        file=sys.stderr,
        flush=True,
    )
    ids = torch.randint(2, args.vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    policy = lrc.Policy(method="qalora", bits=4, group_size=32, rank=16)
    phase(
        "compile (QA-LoRA INT4 g32, rank 16)",
        lambda m=model: lrc.compile(m, policy, example_inputs=(ids,)),
    )
    deployed = phase("fold (split)", lambda m=model: lrc.fold(m))
    del model  # only the folded model goes on: the trained one's fp32 parts are freed here
    phase("drop the trained model", lambda: None)
    out = Path(args.out)
    phase(
        "export_genai (fused attention, accuracy level 4)",
        lambda: lrc.export_genai(deployed, out, accuracy_level=4, attention="gqa"),
    )
    print(
        json.dumps(
            {
                "params": params,
                "layers": args.layers,
                "hidden": args.hidden,
                "intermediate": args.intermediate,
                "vocab": args.vocab,
                "threads": torch.get_num_threads(),
                "folder_bytes": folder_bytes(out),
                "phases": phases,
                "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
