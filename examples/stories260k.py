"""A real pretrained LLM as people load it: stories260K in bfloat16 -> QA-LoRA INT4 with the
default policy -> a short fine-tune -> fold -> onnxruntime-genai folder -> tokens.

    python examples/stories260k.py --steps 30 --out out/stories260k

stories260K (llama2.c's TinyStories Llama, MIT) ships with the package. Its MLP width, 172, is not
a multiple of the group (32): those layers get a short last group, nothing to configure. The
base computes in bfloat16, the adapters train in float32; the folder is float32, so its tokens
are the folded model's computed in float32.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

import lowrank_compiler as lrc
from lowrank_compiler.app.pretrained import load_stories260k

STYLE = [  # the fine-tune: stories about a robot called Zip
    "Once upon a time, there was a little robot named Zip. Zip liked to help his friends.",
    "One day, Zip the robot found a red ball in the park. He gave it to a sad boy.",
    "Zip the robot and Lily went to the sea. They saw a big fish and laughed.",
    "At night, Zip the robot looked at the stars. He was happy and went to sleep.",
]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    ap.add_argument("--out", default="out/stories260k")
    args = ap.parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model, tok = load_stories260k(dtype=getattr(torch, args.dtype))
    tok.pad_token = tok.eos_token  # llama2.c's tokenizer has none; padding is masked below
    batch = tok(STYLE, return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)

    lrc.compile(model, lrc.Policy(method="qalora"), example_inputs=(batch.input_ids[:2, :8],))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for step in range(1, args.steps + 1):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 1 or step % max(1, args.steps // 4) == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    model.eval()

    deployed = lrc.fold(model)
    fold_error = max(lrc.compile_info(deployed).fold_errors.values())
    folder = lrc.export_genai(deployed, Path(args.out) / "genai", tokenizer=tok, accuracy_level=0)
    prompt = tok("Once upon a time", return_tensors="pt").input_ids
    session = lrc.runtime.load(folder)
    tokens = session.generate(prompt, max_new_tokens=args.new_tokens)
    reference = copy.deepcopy(deployed).float()  # what the float32 folder computes
    with torch.no_grad():
        want = reference.generate(
            prompt, do_sample=False, max_new_tokens=args.new_tokens, pad_token_id=0
        )
    print(f"fold error {fold_error:.1e}; folder {folder}")
    print("greedy continuation:", tok.decode(tokens[0], skip_special_tokens=True))
    return {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "fold_error": fold_error,
        "same_tokens": torch.equal(tokens, want),
        "text": tok.decode(tokens[0], skip_special_tokens=True),
    }


if __name__ == "__main__":
    main()
