"""How exactly each method's trained model survives the fold to a deployable integer model.

    python benchmarks/bench_fold.py [--steps 50]

A GPT (4 layers, width 256, random weights) is distilled toward its own fp32 outputs
after its linear layers are quantized (INT4, group 32) and adapted (rank 16): QA-LoRA
trained with float zero points, QA-LoRA trained with integer zero points, LR-QAT
(adapters inside the rounding; its fold packs the trained codes) and QLoRA (NF4 + LoRA). Each
trained model is folded every way it can be, and the folded logits are
compared with the trained model's on held-out tokens: max |y_fold - y| / max |y|.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import lowrank_compiler as lrc
from lowrank_compiler.app.toy import GPTConfig, TinyGPT
from lowrank_compiler.runtime.quant.formats import FOLD_ZEROS

CONFIG = GPTConfig(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=256)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def measure(steps: int = 50) -> list[tuple[str, float, float]]:
    """(trained model and fold, logits max rel error, worst layer's probe error) per fold."""
    torch.manual_seed(0)
    teacher = TinyGPT(CONFIG).eval()
    train_x = torch.randint(0, CONFIG.vocab_size, (8, 64))
    eval_x = torch.randint(0, CONFIG.vocab_size, (8, 64))
    with torch.no_grad():
        target = teacher(train_x)
    runs = {
        "qalora (float zeros)": dict(method="qalora"),
        "qalora (int zeros)": dict(method="qalora", zero_point="int"),
        "lrqat": dict(method="lrqat"),
        "qlora": dict(method="qlora"),
    }
    rows = []
    for label, policy in runs.items():
        torch.manual_seed(0)
        student = TinyGPT(CONFIG)
        student.load_state_dict(teacher.state_dict())
        lrc.compile(student, lrc.Policy(rank=16, alpha=32, bits=4, group_size=32, **policy))
        lr = (
            5e-2 if policy["method"] == "lrqat" else 5e-3
        )  # LR-QAT's adapter moves grid units, not weights
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)
        for _ in range(steps):
            loss = F.mse_loss(student(train_x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        student.eval()
        with torch.no_grad():
            y = student(eval_x)
            for zeros in FOLD_ZEROS if policy["method"] == "qalora" else ("split",):
                folded = lrc.fold(student, zeros=zeros)
                err = rel(folded(eval_x), y)
                worst = max(lrc.compile_info(folded).fold_errors.values())
                name = {
                    "qalora": f"{label}, fold zeros={zeros}",
                    "lrqat": f"{label}, fold (trained integer codes)",
                    "qlora": f"{label}, merge + requantize",
                }[policy["method"]]
                rows.append((name, err, worst))
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)
    rows = measure(args.steps)
    print(f"{args.steps} training steps per method; error of the folded model vs the trained one")
    print("| trained model, fold | logits max rel error | worst layer (probe) |")
    print("| --- | --- | --- |")
    for name, err, worst in rows:
        print(f"| {name} | {err:.2e} | {worst:.2e} |")
    return {name: err for name, err, _ in rows}


if __name__ == "__main__":
    main()
