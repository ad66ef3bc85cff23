"""An edge LLM end to end: HF Llama -> QA-LoRA INT4 -> train on labels -> fold -> onnxruntime-genai
folder
-> onnxruntime-genai and our own KV-cache loop generate the folded model's tokens.

    python examples/decoder_genai.py --steps 60 --out out/llama-genai

The model is built from a small config with random weights (no download); the data is a fixed
batch of token ids (a stand-in for your loader). Needs `pip install ".[genai]"` for the
onnxruntime-genai half; our loop (`lrc.runtime.load(folder).generate`) needs only onnxruntime.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

import lowrank_compiler as lrc


def og_greedy(folder: Path, prompt: list[int], new: int) -> list[int] | None:
    """onnxruntime-genai's own greedy tokens, or None where it is not installed."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([prompt], dtype=np.int32))
    tokens = []
    while not generator.is_done() and len(tokens) < new:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", default="out/llama-genai")
    args = ap.parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(2, 256, (4, 32))

    lrc.compile(
        model,
        lrc.Policy(method="qalora", bits=4, group_size=32, rank=8, alpha=16),
        example_inputs=(ids[:2, :8],),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, args.steps + 1):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % max(1, args.steps // 4) == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")

    deployed = lrc.fold(model)
    folder = lrc.export_genai(deployed, args.out, accuracy_level=0)
    print(
        f"onnxruntime-genai folder: {folder} "
        f"({', '.join(sorted(p.name for p in Path(folder).iterdir()))})"
    )
    prompt = ids[0, :6].tolist()
    with torch.no_grad():
        want = deployed.generate(
            torch.tensor([prompt]),
            max_new_tokens=args.new_tokens,
            do_sample=False,
            eos_token_id=None,
        )[0, len(prompt) :].tolist()
    ours = (
        lrc.runtime.load(folder)
        .generate([prompt], max_new_tokens=args.new_tokens, eos_token_id=[])[0, len(prompt) :]
        .tolist()
    )
    theirs = og_greedy(Path(folder), prompt, args.new_tokens)
    print("folded PyTorch model :", want)
    print("our KV-cache loop    :", ours, "(equal)" if ours == want else "(DIFFERENT)")
    if theirs is not None:
        print(
            "onnxruntime-genai    :",
            theirs,
            "(equal)" if theirs == want[: len(theirs)] else "(DIFFERENT)",
        )
    return {"torch": want, "ours": ours, "onnxruntime_genai": theirs, "loss": loss.item()}


if __name__ == "__main__":
    main()
