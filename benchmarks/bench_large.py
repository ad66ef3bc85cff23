"""Compile and fold a ~1B-parameter Llama-shaped model (random weights) on CPU: memory and time.

    python benchmarks/bench_large.py [--layers 22] [--hidden 2048] [--intermediate 5632]
                                     [--vocab 32000] [--trace export|modules] [--rank 16]

The default shape is TinyLlama-1.1B's (hidden 2048, MLP 5632, 22 layers, 32 heads, 4 KV
heads, vocabulary 32000): 1.10B parameters, 4.4 GB in fp32. The model is built on the
meta device and materialised once on the CPU, its weights filled in place (seeded normal,
norms at one), so the fp32 model exists once. Then QA-LoRA (INT4, groups of 32, rank 16)
compiles every block linear (7 per layer; the head stays float, as ``all-linear`` says),
and ``fold`` (split zero points) makes the deployable integer model.

What memory to expect: the quantizing pass replaces one layer at a time; the only
full-size temporaries are one layer's (tens of MB). The replaced fp32 layers stay
referenced by the swap journal until ``compile`` returns, so that a failure can restore
the model; then they are freed. So the peak is the fp32 model plus its INT4 form (about
1/6 of the linear weights' fp32 bytes), never two fp32 copies. ``fold`` copies the compiled
model (integer weights, float embeddings and head) and folds the copy.

Prints one table: each phase's time, the process's resident memory after it, and the
peak resident memory so far (``resource.getrusage``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import resource
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.utils import logging as hf_logging

import lowrank_compiler as lrc

GiB = 2**30


def rss() -> float:
    """Resident memory now, GiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GiB


def peak() -> float:
    """Peak resident memory of this process so far, GiB (ru_maxrss is in KiB on Linux)."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB, rss())


def build(args) -> torch.nn.Module:
    """The model on the meta device, then materialised once in fp32 and filled in place."""
    hf_logging.set_verbosity_error()
    cfg = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=4,
        vocab_size=args.vocab,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    model.model.rotary_emb = LlamaRotaryEmbedding(cfg)  # its buffers were left empty by to_empty
    return model.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--trace",
        choices=("export", "modules"),
        default="export",
        help="torch.export (the HF path) or match modules by name without a graph",
    )
    args = parser.parse_args(argv)
    rows = [("start", 0.0, rss(), peak())]

    def phase(name, fn):
        started = time.perf_counter()
        out = fn()
        gc.collect()
        rows.append((name, time.perf_counter() - started, rss(), peak()))
        print(
            f"{name}: {rows[-1][1]:.1f} s, rss {rows[-1][2]:.2f} GiB, peak {rows[-1][3]:.2f} GiB",
            flush=True,
        )
        return out

    model = phase("build fp32 model", lambda: build(args))
    params = sum(p.numel() for p in model.parameters())
    linear = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n != "lm_head"
    )
    ids = torch.randint(2, args.vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    policy = lrc.Policy(
        method="qalora", bits=4, group_size=32, rank=args.rank, alpha=2.0 * args.rank
    )
    example = {"example_inputs": (ids,)} if args.trace == "export" else {"trace_mode": "modules"}
    phase(
        f"compile (QA-LoRA INT4 g32, trace {args.trace})",
        functools.partial(lrc.compile, model, policy, **example),
    )
    compiled_int = sum(t.numel() * t.element_size() for t in model.buffers())
    with torch.no_grad():  # adapters as after training: the zero points really move
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(2))
    deployed = phase("fold (split)", functools.partial(lrc.fold, model))
    del model
    phase("drop the trained model", lambda: None)
    rel = max(lrc.compile_info(deployed).fold_errors.values())
    int_bytes = sum(t.numel() * t.element_size() for t in deployed.buffers())

    print(
        f"\n{params / 1e9:.2f}B parameters ({params * 4 / GiB:.2f} GiB fp32; block linears "
        f"{linear / 1e9:.2f}B = {linear * 4 / GiB:.2f} GiB fp32; INT4 form "
        f"{compiled_int / GiB:.2f} GiB "
        f"compiled, {int_bytes / GiB:.2f} GiB folded with split corrections); "
        f"{torch.get_num_threads()} threads; fold max relative error {rel:.1e}\n"
    )
    print("| phase | time | RSS after | peak RSS so far |\n| --- | --- | --- | --- |")
    for name, seconds, now, top in rows:
        print(f"| {name} | {seconds:.1f} s | {now:.2f} GiB | {top:.2f} GiB |")


if __name__ == "__main__":
    main()
