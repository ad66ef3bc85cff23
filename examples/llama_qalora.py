"""A causal LM through the whole path: HF Llama -> QA-LoRA INT4 -> train on labels -> fold -> ONNX.

    python examples/llama_qalora.py --steps 60 --out out/llama

The model is built from a small config with random weights (no download); the data is a
fixed batch of token ids (a stand-in for your loader). Prints the summary, the loss, the
dump files, the fold errors, the ONNX parity and a greedy generation before and after.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

import lowrank_compiler as lrc


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="out/llama")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
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

    policy = lrc.Policy(method="qalora", bits=4, group_size=32, rank=8, alpha=16)
    lrc.compile(model, policy, example_inputs=(ids[:2, :8],), dump_dir=out / "dumps")
    print(lrc.summary(model))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for step in range(1, args.steps + 1):
        loss = model(ids, labels=ids).loss  # the HF loss, unchanged by compile
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
        if step == 1 or step % max(1, args.steps // 4) == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")

    deployed = lrc.fold(model, zeros="split", dump_dir=out / "dumps")
    errors = lrc.compile_info(deployed).fold_errors
    print(f"fold: {len(errors)} layers, worst relative error {max(errors.values()):.2e}")
    path = lrc.export_onnx(deployed, out / "llama_int4.onnx", example_inputs=(ids[:2, :8],))
    report = lrc.inspect_onnx(path)
    session = lrc.runtime.load(path)
    with torch.no_grad():
        ref = deployed(ids[:3, :20]).logits
    got = session(ids[:3, :20])
    parity = ((got - ref).abs().max() / ref.abs().max()).item()
    print(
        f"ONNX {path} ({path.stat().st_size / 1024:.0f} KiB): pure int4 {report.is_pure_int4}, "
        f"max |onnxruntime - torch| / max |y| = {parity:.2e}"
    )
    prompt = ids[:1, :6]
    print(
        "greedy continuation (folded model):",
        deployed.generate(prompt, max_new_tokens=8, do_sample=False)[0, 6:].tolist(),
    )
    print("dumps:", ", ".join(sorted(p.name for p in (out / "dumps").iterdir())))
    return {
        "first_loss": first,
        "last_loss": loss.item(),
        "parity": parity,
        "pure": report.is_pure_int4,
        "fold_error": max(errors.values()),
    }


if __name__ == "__main__":
    main()
