"""A hand-written GPT through the whole LoRA path: trace with torch.fx, rewrite, read the dumps,
train.

    python examples/custom_gpt.py --steps 100 --dump-dir out/custom_gpt

Prints the summary, the dump files written per pass, and the loss while the adapters
train on a fixed batch of random tokens (a stand-in for your data loader).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import lowrank_compiler as lrc
from lowrank_compiler.app.toy import GPTConfig, TinyGPT


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--dump-dir", default="out/custom_gpt")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(n_layer=2, n_embd=64, n_head=4))
    policy = lrc.Policy(
        target=["attn.q_proj", "attn.v_proj", "mlp.*"], rank=args.rank, alpha=2.0 * args.rank
    )
    lrc.compile(
        model, policy, dump_dir=args.dump_dir
    )  # no example inputs: torch.fx symbolic tracing
    print(lrc.summary(model))
    print(f"\npipeline: {lrc.compile_info(model).pipeline}")
    for path in sorted(Path(args.dump_dir).glob("*.txt")):
        first = path.read_text().splitlines()[0]
        print(f"  {path.name:24s} {first}")

    idx = torch.randint(0, model.cfg.vocab_size, (8, 32))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = None
    for step in range(1, args.steps + 1):
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % max(1, args.steps // 5) == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    return loss.item()


if __name__ == "__main__":
    main()
