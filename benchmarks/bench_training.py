"""Training-step cost and frozen-base bytes: QA-LoRA and LR-QAT over INT4 vs LoRA over fp32, side by
side.

    python -m benchmarks.bench_training [--steps 12] [--batch 8] [--seq 128]

Builds a ~21M-parameter GPT (6 layers, width 512, vocab 4096, random weights), compiles
one copy with LoRA over the fp32 base, one with QA-LoRA over INT4 (group 32) and one with
LR-QAT (INT4 g32, its grid positions one byte a weight), all at rank 16 on every linear
layer but the head, and times full training steps (forward, backward, AdamW) in turn, so
machine noise hits all alike. Reports median step
times, their ratio, and the bytes the frozen linear weights occupy (the tensors' storage
as allocated, not a formula).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lowrank_compiler as lrc
from lowrank_compiler.app.toy import GPTConfig, TinyGPT

from .common import base_linear_bytes

CONFIG = GPTConfig(vocab_size=4096, block_size=256, n_layer=6, n_head=8, n_embd=512)


def build(method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = TinyGPT(CONFIG)
    return lrc.compile(model, lrc.Policy(method=method, rank=16, alpha=32, bits=4, group_size=32))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args(argv)

    models = {
        "lora-fp32": build("lora"),
        "qalora-int4": build("qalora"),
        "lrqat-int4": build("lrqat"),
    }
    n_params = sum(p.numel() for p in TinyGPT(CONFIG).parameters())
    x = torch.randint(0, CONFIG.vocab_size, (args.batch, args.seq + 1))
    opts = {
        k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        for k, m in models.items()
    }
    times: dict[str, list[float]] = {k: [] for k in models}

    def step(name):
        model, opt = models[name], opts[name]
        t = time.perf_counter()
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    for name in models:  # warm-up
        step(name)
    for _ in range(args.steps):
        for name in models:
            times[name].append(step(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    nbytes = {k: base_linear_bytes(m)[0] for k, m in models.items()}
    ours = [k for k in models if k != "lora-fp32"]
    result = {
        "params": n_params,
        "step_ms": {k: 1000 * v for k, v in med.items()},
        "step_ratio": {k: med[k] / med["lora-fp32"] for k in ours},
        "base_bytes": nbytes,
        "bytes_ratio": {k: nbytes[k] / nbytes["lora-fp32"] for k in ours},
    }
    print(
        f"model: {n_params / 1e6:.1f}M parameters, batch {args.batch} x seq {args.seq}, "
        f"{torch.get_num_threads()} threads, {args.steps} steps each, alternating"
    )
    print("| base | step (median) | vs LoRA over fp32 | frozen linear weights | vs fp32 |")
    print("| --- | --- | --- | --- | --- |")
    for k in models:
        step, size = result["step_ratio"].get(k, 1.0), result["bytes_ratio"].get(k, 1.0)
        print(
            f"| {k} | {med[k] * 1000:.1f} ms | {step:.2f}x | {nbytes[k] / 2**20:.2f} MiB | "
            f"{size:.3f}x |"
        )
    return result


if __name__ == "__main__":
    main()
