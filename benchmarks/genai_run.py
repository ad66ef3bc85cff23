"""The genai section's runners: one onnxruntime-genai generation timed, our file without a KV
cache, and the ~1B export in a child process."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import lowrank_compiler as lrc

ROOT = Path(__file__).resolve().parent.parent  # where ``python -m benchmarks.genai_large`` resolves


def one_run(model, prompt: list[int], new: int, adapter=None, tokens=None) -> tuple[float, float]:
    """(prefill seconds, median decode seconds per token over steps 2..new) of one fresh
    generator; ``adapter``: ``(og.Adapters, name)`` to activate; ``tokens``: a list the sequence
    is put into."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new, do_sample=False)
    generator = og.Generator(model, params)
    if adapter is not None:
        generator.set_active_adapter(*adapter)
    start = time.perf_counter()
    generator.append_tokens(np.array([prompt], dtype=np.int32))
    prefill = time.perf_counter() - start
    steps = []
    while not generator.is_done():
        t = time.perf_counter()
        generator.generate_next_token()
        steps.append(time.perf_counter() - t)
    if tokens is not None:
        tokens[:] = list(generator.get_sequence(0))
    return prefill, statistics.median(steps[1:])


def no_cache_session(deployed, path: Path, vocab: int, threads: int):
    """Our file without a KV cache (``export_onnx``, logits only): a callable on token ids."""
    ids = torch.randint(4, vocab, (2, 8), generator=torch.Generator().manual_seed(1))
    lrc.export_onnx(deployed, path, example_inputs=(ids,), accuracy_level=4)
    return lrc.runtime.load(path, threads=threads)


def large_export(shape: tuple[int, int, int, int], out: Path, log) -> dict:
    """Run ``genai_large`` in a child process; its JSON result, or ``{"error": ...}`` with its last
    words."""
    layers, hidden, mlp, vocab = shape
    log(
        f"  export cost: a {layers}-layer decoder, hidden {hidden}, MLP {mlp}, vocabulary {vocab}, "
        "in a child process"
    )
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.genai_large",
        "--out",
        str(out),
        "--layers",
        str(layers),
        "--hidden",
        str(hidden),
        "--intermediate",
        str(mlp),
        "--vocab",
        str(vocab),
    ]
    started = time.perf_counter()
    tail = []
    with open(
        out.with_suffix(".stdout"), "w+"
    ) as stdout:  # a file: a full pipe would stall the child
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True)
        for line in child.stderr:  # progress, forwarded as it comes
            if line.startswith("  large export:"):
                log(line.rstrip())
            else:
                tail = (tail + [line.rstrip()])[-30:]
        code = child.wait()
        stdout.seek(0)
        lines = stdout.read().strip().splitlines()
    shutil.rmtree(out, ignore_errors=True)
    if code != 0 or not lines:
        return {
            "error": f"the export process exited with status {code}",
            "stderr_tail": "\n".join(tail),
        }
    result = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - started  # with the child's start-up and imports
    return result
