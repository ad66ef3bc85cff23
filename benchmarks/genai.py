"""7. Decoders in onnxruntime-genai: ours vs its model builder, with and without a LoRA adapter.

One Llama-shaped fp32 model (``genai_models``: default hidden 2048, 4 layers, 16 heads / 4 kv
heads, MLP 5632, vocabulary 512; 2-D weights with std 1/sqrt(fan_in)), seven folders:

- builder: ``onnxruntime_genai.models.builder -p int4 -e cpu``, asymmetric INT4 block 32,
  accuracy level 4, ``lm_head`` float (as ours leaves it);
- builder-sym: the same with the builder's default symmetric grid (no zero points: MatMulNBits'
  implicit zero point 8), for what that grid is worth on this CPU;
- ours: ``compile`` RTN INT4 g32 of the same weights, ``export_genai(attention="gqa")``;
- ours-plain: the same with ``attention="plain"``;
- builder-lora: the builder with ``adapter_path``: a rank-16 LoRA on every block linear,
  added as an unmerged branch over its INT4 base;
- ours-lora: the same adapter (QA-LoRA, float zero points) compiled onto our INT4 base and
  folded (``split``: integer zero points + a per-group correction),
  ``export_genai(attention="gqa")``;
- ours-lora-int: a QA-LoRA adapter trained with integer zero points (rounded: PEFT cannot
  express it, so the builder cannot take it), folded: no correction, the base's graph;

plus, for the KV cache's worth, our file without a cache (``export_onnx``): each token then
costs a forward over the whole prefix (one onnxruntime call over ``context + 1`` tokens).

Each round, per context: every folder once (a fresh generator, a random prompt of ``context``
tokens appended, the prefill, timed; then ``new`` tokens, decode ms/token = the median of steps
2..new, as onnxruntime-genai runs the model lazily), the order rotated by one each round and
0.1 s of rest before each (onnxruntime's workers spin a while after a session's last call, and a
prefill started at once after another folder's would share the cores with them), the no-cache
file at its context, and one pass of the memory-bandwidth measurement (``common.Bandwidth``, the
floor section's, with the decoder's thread count); medians of ``reps`` rounds. Bytes per
decoded token = the initializers a step reads (``onnx_bytes.per_token_bytes``: an embedding table
counts one row) + the KV cache at that context; floor tokens/s = bandwidth / those bytes.

Last, the export cost of a ~1B-parameter decoder, in a child process (``genai_large``).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

import lowrank_compiler as lrc

from . import genai_models as gm
from .common import Bandwidth, check_settings, cpu_flags
from .genai_run import large_export, no_cache_session, one_run
from .onnx_bytes import per_token_bytes

# onnxruntime's workers spin for tens of milliseconds after a session's last call: a prefill
# started at once after another folder's decode shares the cores with them (about +10% at
# context 128, measured), so each run waits this long and the order rotates by round
PAUSE_S = 0.1
FOLDERS = (
    "builder",
    "builder-sym",
    "ours",
    "ours-plain",
    "builder-lora",
    "ours-lora",
    "ours-lora-int",
)


@dataclass(frozen=True)
class Settings:
    hidden: int = 2048
    layers: int = 4
    heads: int = 16
    kv_heads: int = 4
    vocab: int = 512
    contexts: tuple[int, ...] = (128, 512, 1024)
    no_cache_context: int = 512  # one of contexts
    new: int = 32
    reps: int = 3
    threads: int = 2
    rank: int = 16
    bandwidth_bytes: int = 1 << 30
    large: tuple[int, int, int, int] = (22, 2048, 5632, 32000)  # layers, hidden, MLP, vocabulary

    def __post_init__(self):
        check_settings(
            "genai",
            hidden=self.hidden,
            layers=self.layers,
            heads=self.heads,
            kv_heads=self.kv_heads,
            vocab=self.vocab,
            contexts=self.contexts,
            no_cache_context=self.no_cache_context,
            new=self.new,
            reps=self.reps,
            threads=self.threads,
            rank=self.rank,
            bandwidth_bytes=self.bandwidth_bytes,
            large=self.large,
        )
        if self.hidden % self.heads or self.heads % self.kv_heads or self.hidden % 32:
            raise ValueError(
                f"genai: hidden {self.hidden} must split into {self.heads} heads, a multiple of "
                f"{self.kv_heads} kv heads, and be a multiple of 32 (INT4 groups)"
            )
        if self.no_cache_context not in self.contexts:
            raise ValueError(
                f"genai.no_cache_context {self.no_cache_context} must be one of contexts "
                f"{self.contexts}"
            )
        if self.new < 3:
            raise ValueError(
                "genai.new must be at least 3 (decode time is the median of steps 2..new), got "
                f"{self.new}"
            )
        if self.large[1] % 256:  # bench_large.build: heads of 64, 4 kv heads
            raise ValueError(
                f"genai.large's hidden size must be a multiple of 256, got {self.large[1]}"
            )
        if (
            gm.mlp_width(self.hidden) == self.vocab
        ):  # the builder takes every Linear that wide for the head
            raise ValueError(
                f"genai.vocab must differ from the MLP width {gm.mlp_width(self.hidden)}: "
                "onnxruntime-"
                f"genai's builder takes any linear layer with vocabulary-many outputs for lm_head"
            )


def versions() -> dict:
    import onnxruntime
    import onnxruntime_genai
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_genai": onnxruntime_genai.__version__,
    }


def build(s: Settings, work: Path, log) -> tuple[dict[str, Path], dict[str, float], object]:
    """The seven folders (and how long each took to write); returns the RTN model too, for the
    no-cache file."""
    model = gm.make_model(
        s.hidden, s.layers, s.heads, s.kv_heads, s.vocab, 2 * max(s.contexts) + s.new
    )
    hf_dir = work / "hf"
    gm.save_with_tokenizer(model, hf_dir)
    folders = {name: work / name for name in FOLDERS}  # each written once, in this order
    seconds = {}

    def timed(name, fn):
        log(f"  {name}")
        t = time.perf_counter()
        fn()
        seconds[name] = time.perf_counter() - t

    timed("builder", lambda: gm.build_builder(hf_dir, folders["builder"]))
    timed("builder-sym", lambda: gm.build_builder(hf_dir, folders["builder-sym"], symmetric=True))
    deployed = gm.ours_int4(model, "rtn")
    timed("ours", lambda: gm.build_ours(deployed, folders["ours"], "gqa", hf_dir))
    timed("ours-plain", lambda: gm.build_ours(deployed, folders["ours-plain"], "plain", hf_dir))
    adapted = gm.with_adapter(model, s.rank)
    adapter = gm.plain_lora_adapter(adapted, work / "adapter")
    timed("builder-lora", lambda: gm.build_builder(hf_dir, folders["builder-lora"], adapter))
    timed(
        "ours-lora", lambda: gm.build_ours(lrc.fold(adapted), folders["ours-lora"], "gqa", hf_dir)
    )
    rounded = gm.with_adapter(model, s.rank, zero_point="int")
    timed(
        "ours-lora-int",
        lambda: gm.build_ours(lrc.fold(rounded), folders["ours-lora-int"], "gqa", hf_dir),
    )
    for folder in folders.values():
        gm.set_threads(folder, s.threads)
    return folders, seconds, deployed


def graph_facts(folders: dict[str, Path]) -> dict:
    """Node counts, and what the builder's adapter route wrote."""
    nodes, lora_ops = {}, collections.Counter()
    for name, folder in folders.items():
        graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
        nodes[name] = len(graph.node)
        if name == "builder-lora":
            lora_ops.update(n.op_type for n in graph.node if "lora" in n.name.lower())
    return {
        "nodes": nodes,
        "builder_lora_ops": dict(lora_ops),
        "builder_lora_files": sorted(p.name for p in folders["builder-lora"].iterdir()),
    }


def measure(s: Settings, folders: dict[str, Path], no_cache, log) -> dict:
    """Interleaved rounds per context: medians of decode ms/token, prefill ms, no-cache ms,
    bandwidth."""
    import onnxruntime_genai as og

    models = {name: og.Model(str(folder)) for name, folder in folders.items()}
    bw = Bandwidth(s.bandwidth_bytes)
    rng = np.random.default_rng(0)
    samples = collections.defaultdict(list)
    for ctx in s.contexts:
        log(
            f"  context {ctx}: {len(models)} "
            f"folders{' and the no-cache file' if ctx == s.no_cache_context else ''}"
            f", {s.reps} interleaved rounds"
        )
        prompt = rng.integers(4, s.vocab, ctx).tolist()
        feed = rng.integers(4, s.vocab, (1, ctx + 1)).astype(np.int64)
        for r in range(-1, s.reps):  # round -1: warm-up, not recorded
            names = list(models)
            shift = (r + 1) % len(names)  # each round starts at another folder
            for name in names[shift:] + names[:shift]:
                time.sleep(PAUSE_S)
                prefill, decode = one_run(models[name], prompt, s.new if r >= 0 else 3)
                if r >= 0:
                    samples[("decode", name, ctx)].append(decode)
                    samples[("prefill", name, ctx)].append(prefill)
            if ctx == s.no_cache_context:
                t = time.perf_counter()
                no_cache(feed)
                if r >= 0:
                    samples[("no_cache", "ours", ctx)].append(time.perf_counter() - t)
            value = bw.measure(s.threads)
            if r >= 0:
                samples[("bandwidth", "", 0)].append(value)
    del models
    out = collections.defaultdict(dict)
    for (kind, name, ctx), v in samples.items():
        out[kind].setdefault(name, {})[str(ctx)] = statistics.median(v) * (
            1 if kind == "bandwidth" else 1e3
        )
    return {
        "decode_ms": out["decode"],
        "prefill_ms": out["prefill"],
        "no_cache_ms": out["no_cache"]["ours"],
        "bandwidth": out["bandwidth"][""]["0"],
    }


def run(s: Settings, work: Path, log) -> dict:
    log(
        f"genai: Llama-shaped, hidden {s.hidden}, {s.layers} layers, {s.heads}/{s.kv_heads} heads; "
        "CPU flags: "
        f"{cpu_flags()}"
    )
    work = Path(tempfile.mkdtemp(prefix="genai-", dir=work))
    started = time.perf_counter()
    folders, build_s, deployed = build(s, work, log)
    no_cache = no_cache_session(deployed, work / "no_cache.onnx", s.vocab, s.threads)
    del deployed
    prep_s = time.perf_counter() - started
    measured = measure(s, folders, no_cache, log)
    del no_cache
    head_dim = s.hidden // s.heads
    kv_bytes = {
        str(c): s.layers * 2 * s.kv_heads * c * head_dim * 4 for c in s.contexts
    }  # fp32 keys and values
    weight_bytes = {
        name: per_token_bytes(folder / "model.onnx") for name, folder in folders.items()
    }
    facts = graph_facts(folders)
    large = large_export(s.large, work / "large", log)
    return {
        **measured,
        "weight_bytes": weight_bytes,
        "kv_bytes": kv_bytes,
        **facts,
        "build_s": build_s,
        "prepare_s": prep_s,
        "large": large,
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "versions": versions(),
        "settings": dataclasses.asdict(s),
    }
