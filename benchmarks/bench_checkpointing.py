"""What gradient checkpointing saves on a compiled ~100M decoder: peak memory of a training step
with and without it, side by side.

    python -m benchmarks.bench_checkpointing [--batch 4] [--seq 256] [--steps 1]

Builds an HF Llama of ~100M parameters from a config (random weights: width 768, 12 layers,
12 query / 4 key-value heads, MLP 2048, vocabulary 32000, tied embeddings), compiles it with
QA-LoRA INT4 g32 rank 16 on every linear layer but the head, and runs training steps (forward,
backward, AdamW) in a fresh process per setting, so each peak is its own: the kernel's resident
high-water mark during the first step (``/proc/self/clear_refs``), less the resident set before it
(the model, the optimizer, the data; later steps reuse memory the allocator kept, which hides what
they need). Then times ``--steps`` more steps: checkpointing recomputes each decoder layer's
forward in the backward pass. Prints the CPU and its flags.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import lowrank_compiler as lrc

    config = LlamaConfig(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, config.vocab_size, (2, 8))
    lrc.compile(model, lrc.Policy(method="qalora", rank=16), example_inputs=(ids,))
    return model, params


def one_setting(checkpointing: bool, batch: int, seq: int, steps: int) -> dict:
    """Runs in its own process: how far the first step's peak rises above the resident set
    before it (the model, the optimizer, the data), then the time of later steps."""
    import torch

    from lowrank_compiler.app.jobs.memory import PeakRSS, resident_bytes

    model, params = build()
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 32000, (batch, seq), generator=torch.Generator().manual_seed(1))

    def step():
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    resting = resident_bytes()
    with PeakRSS(resting) as peak:  # the first step: memory the allocator has not pooled yet
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "params": params,
        "resting_bytes": resting,
        "peak_bytes": peak.bytes,
        "step_bytes": peak.grown,
        "exact": peak.exact,
        "step_s": min(times),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--setting", choices=("plain", "checkpointing"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.setting:  # the child
        print(
            json.dumps(
                one_setting(args.setting == "checkpointing", args.batch, args.seq, args.steps)
            )
        )
        return {}
    from benchmarks.common import machine, machine_line

    results = {}
    for setting in ("plain", "checkpointing"):
        cmd = [sys.executable, "-m", "benchmarks.bench_checkpointing", "--setting", setting]
        cmd += ["--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        results[setting] = json.loads(out.strip().splitlines()[-1])
    plain, ckpt = results["plain"], results["checkpointing"]
    print(machine_line(machine()))
    print(
        f"Llama {plain['params'] / 1e6:.0f}M parameters, QA-LoRA INT4 g32 rank 16, batch "
        f"{args.batch} x seq {args.seq}, AdamW; the first step's peak resident memory above the "
        "resident set before it"
    )
    print("| setting | a step's peak above the rest | resident before | step time |")
    print("| --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['step_bytes'] / 2**20:.0f} MiB | {r['resting_bytes'] / 2**20:.0f} MiB "
            f"| {r['step_s']:.2f} s |"
        )
    summary = {
        "memory_ratio": ckpt["step_bytes"] / plain["step_bytes"],
        "saved_mib": (plain["step_bytes"] - ckpt["step_bytes"]) / 2**20,
        "time_ratio": ckpt["step_s"] / plain["step_s"],
        "exact": plain["exact"] and ckpt["exact"],
    }
    print(
        f"checkpointing: {summary['memory_ratio']:.2f}x the step's memory "
        f"({summary['saved_mib']:.0f} MiB saved), {summary['time_ratio']:.2f}x the step time"
    )
    return {"settings": results, **summary}


if __name__ == "__main__":
    main()
