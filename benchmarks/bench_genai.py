"""Decode speed in onnxruntime-genai: the model builder's INT4 file vs ours (fused GQA graph) vs
ours plain, same weights, side by side.

    python benchmarks/bench_genai.py [--small] [--hidden 2048] [--contexts 128 1024] [--reps 3]

A Llama-shaped fp32 model (default hidden 2048, 4 layers, 16 heads / 4 kv heads, MLP 2.75x,
vocabulary 512; ``--small``: hidden 512), 2-D weights drawn with std 1/sqrt(fan_in), saved with
``save_pretrained`` beside a tiny word-level tokenizer (``tokenizers``, built here) in a temporary
folder. Three onnxruntime-genai folders from it:

- builder: ``python -m onnxruntime_genai.models.builder -p int4 -e cpu`` with asymmetric INT4,
  block 32, accuracy level 4, ``lm_head`` left float (``nodes_to_exclude``) as ours leaves it;
- ours: ``compile(method)`` INT4 g32 (rtn or qalora) of the same weights, ``fold``,
  ``export_genai(accuracy_level=4, attention="gqa")``;
- ours-plain: the same with ``attention="plain"``;

and, for the KV cache's worth, our file without a cache (``export_onnx``): each token then costs a
forward over the whole prefix, timed on onnxruntime (one call over ``context + 1`` tokens).

Each run: a fresh generator, a random prompt of ``context`` tokens (``append_tokens``, the prefill,
timed), then ``--new`` tokens; onnxruntime-genai runs the model lazily, so decode ms/token is the
median of calls 2..new. Runs are interleaved across the folders; medians of ``--reps``. Prints one
markdown table with the CPU, its flags and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "fma")


def cpu() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores; flags: {' '.join(f for f in FLAGS if f in flags) or 'none of ' + ','.join(FLAGS)}"


def versions() -> str:
    import onnxruntime
    import onnxruntime_genai
    import transformers

    return (f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, onnxruntime-genai {onnxruntime_genai.__version__}")


def make_model(hidden: int, layers: int, heads: int, kv_heads: int, vocab: int, context: int):
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=hidden, intermediate_size=(int(2.75 * hidden) // 256) * 256 or 256, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab, max_position_embeddings=context,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # std 0.02 gives near-tied logits; 1/sqrt(fan_in) keeps greedy runs meaningful
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def save_with_tokenizer(model, folder: Path) -> None:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, model.config.vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                               pad_token="<pad>", unk_token="<unk>")
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


def build_builder(hf_dir: Path, out: Path) -> None:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out), "-p", "int4",
           "-e", "cpu", "-c", str(out.parent / "builder-cache"), "--extra_options", "int4_is_symmetric=false",
           "int4_block_size=32", "int4_accuracy_level=4", "nodes_to_exclude=/lm_head/MatMul"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the model builder failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def ours_int4(model, method: str):
    """The same weights, INT4 g32 by our compiler (QA-LoRA folded, or RTN)."""
    import copy

    import lowrank_compiler as lrc

    m = copy.deepcopy(model)
    ids = torch.randint(4, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    lrc.compile(m, lrc.Policy(method=method, bits=4, group_size=32, **({"rank": 8} if method == "qalora" else {})),
                example_inputs=(ids,))
    return lrc.fold(m) if method == "qalora" else m


def build_ours(deployed, out: Path, attention: str, tokenizer_dir: Path) -> None:
    import lowrank_compiler as lrc

    lrc.export_genai(deployed, out, tokenizer=str(tokenizer_dir), accuracy_level=4, attention=attention)


def no_cache_ms(deployed, path: Path, contexts: list[int], vocab: int, threads: int, reps: int) -> dict[int, float]:
    """What a token costs without a KV cache: one forward over the whole prefix (the file export_onnx
    writes, logits only), median of ``reps`` per context."""
    import lowrank_compiler as lrc

    ids = torch.randint(4, vocab, (2, 8), generator=torch.Generator().manual_seed(1))
    lrc.export_onnx(deployed, path, example_inputs=(ids,), accuracy_level=4)
    session = lrc.runtime.load(path, threads=threads)
    rng = np.random.default_rng(1)
    out = {}
    for ctx in contexts:
        feed = rng.integers(4, vocab, (1, ctx + 1)).astype(np.int64)
        session(feed)  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            session(feed)
            times.append(time.perf_counter() - t)
        out[ctx] = statistics.median(times) * 1e3
    return out


def set_threads(folder: Path, threads: int) -> None:
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"], options["inter_op_num_threads"] = threads, 1
    path.write_text(json.dumps(config, indent=2))


def one_run(og, model, prompt: list[int], new: int) -> tuple[float, float]:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new, do_sample=False)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(np.array([prompt], dtype=np.int32))
    prefill = time.perf_counter() - start
    steps = []
    while not generator.is_done():
        t = time.perf_counter()
        generator.generate_next_token()
        steps.append(time.perf_counter() - t)
    return prefill, statistics.median(steps[1:])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="hidden 512")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", choices=("rtn", "qalora"), default="rtn")
    a = ap.parse_args(argv)
    import onnxruntime_genai as og

    hidden = 512 if a.small else a.hidden
    context = 2 * max(a.contexts) + a.new
    model = make_model(hidden, a.layers, a.heads, a.kv_heads, a.vocab, context)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf_dir = tmp / "hf"
        save_with_tokenizer(model, hf_dir)
        folders = {"builder": tmp / "builder", "ours": tmp / "ours", "ours-plain": tmp / "ours-plain"}
        build_time = {}
        t = time.perf_counter()
        build_builder(hf_dir, folders["builder"])
        build_time["builder"] = time.perf_counter() - t
        deployed = ours_int4(model, a.method)
        for name, attention in (("ours", "gqa"), ("ours-plain", "plain")):
            t = time.perf_counter()
            build_ours(deployed, folders[name], attention, hf_dir)
            build_time[name] = time.perf_counter() - t
        for folder in folders.values():
            set_threads(folder, a.threads)
        loaded = {name: og.Model(str(folder)) for name, folder in folders.items()}
        rng = np.random.default_rng(0)
        results: dict[tuple[int, str], dict[str, list[float]]] = {}
        for ctx in a.contexts:
            prompt = rng.integers(4, a.vocab, ctx).tolist()
            for m in loaded.values():  # warm-up
                one_run(og, m, prompt, 4)
            for _ in range(a.reps):
                for name, m in loaded.items():  # interleaved
                    prefill, decode = one_run(og, m, prompt, a.new)
                    r = results.setdefault((ctx, name), {"prefill": [], "decode": []})
                    r["prefill"].append(prefill)
                    r["decode"].append(decode)
        without_cache = no_cache_ms(deployed, tmp / "no_cache.onnx", a.contexts, a.vocab, a.threads, a.reps)
    median = {key: {k: statistics.median(v) * 1e3 for k, v in r.items()} for key, r in results.items()}
    print(f"\nLlama-shaped fp32 source, hidden {hidden}, {a.layers} layers, {a.heads}/{a.kv_heads} heads, vocabulary "
          f"{a.vocab}; INT4 g32 asymmetric, accuracy level 4, lm_head float; ours: {a.method}. onnxruntime-genai, "
          f"{a.threads} intra-op threads, {a.new} new tokens, medians of {a.reps} interleaved runs.")
    print(f"CPU: {cpu()}; load average at the end {os.getloadavg()[0]:.2f}")
    print(f"Versions: {versions()}")
    print(f"Build seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in build_time.items()) + "\n")
    print("| context | file | decode ms/token | ours/builder | prefill ms | ours/builder |")
    print("|---|---|---|---|---|---|")
    for ctx in a.contexts:
        base = median[(ctx, "builder")]
        for name in folders:
            r = median[(ctx, name)]
            print(f"| {ctx} | {name} | {r['decode']:.2f} | {r['decode'] / base['decode']:.2f} | {r['prefill']:.1f} | "
                  f"{r['prefill'] / base['prefill']:.2f} |")
        print(f"| {ctx} | ours, no KV cache (the whole prefix per token, onnxruntime) | {without_cache[ctx]:.2f} | "
              f"{without_cache[ctx] / base['decode']:.2f} | - | - |")
    print("\nKV cache vs re-running the prefix, ours (fused): " + ", ".join(
        f"context {ctx}: {without_cache[ctx] / median[(ctx, 'ours')]['decode']:.1f}x" for ctx in a.contexts))


if __name__ == "__main__":
    main()
