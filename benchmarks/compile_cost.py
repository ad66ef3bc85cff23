"""6. Compile cost: compile + fold of a ~100M-parameter model, against onnxruntime's quantizer.

The Llama-shaped model of the speed section (hidden 2048, 2 layers: ~105M parameters),
every linear layer targeted, head included, INT4 group 32:

- ours: ``compile`` (tracing with ``torch.export``, quantizing, inserting QA-LoRA) and
  ``fold(zeros="split")`` (a new model: copy, fold, probe each layer's error), on a fresh
  copy of the fp32 model each round (the copy is not timed); and ``compile`` with
  ``trace_mode="modules"`` (no graph: the same layers by name), to show what tracing costs;
- onnxruntime: ``MatMulNBitsQuantizer(...).process()`` (INT4, block 32, asymmetric) on the
  fp32 ONNX file of the same model, loaded afresh each round (loading is not timed).

One untimed warm-up of each side (the first ``torch.export`` and the first quantizer run pay
one-off lazy initialisation), then rounds alternate; medians. Throughput = bytes of the fp32
weights quantized / time. Both use their defaults for threads (torch: every core).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

import lowrank_compiler as lrc
from lowrank_compiler import export_onnx

from . import bench_onnx
from .common import check_settings
from .speed import VOCAB, check_model


@dataclass(frozen=True)
class Settings:
    hidden: int = 2048
    layers: int = 2
    repeats: int = 5

    def __post_init__(self):
        check_settings("compile", hidden=self.hidden, layers=self.layers, repeats=self.repeats)
        check_model("compile", self.hidden, ("int",))


POLICY = lrc.Policy(
    method="qalora", target=["all-linear", "lm_head"], bits=4, group_size=32, rank=16
)


def run(s: Settings, work: Path, log) -> dict:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    for name in ("onnx_ir", "onnxscript", "onnxruntime.quantization"):
        logging.getLogger(name).setLevel(logging.WARNING)
    log(f"compile: Llama-shaped, hidden {s.hidden}, {s.layers} layers")
    x = torch.randint(2, VOCAB, (2, 8))
    model = bench_onnx.build(s.hidden, s.layers)
    params = sum(p.numel() for p in model.parameters())
    fp32_path = work / f"llama{s.hidden}x{s.layers}_fp32.onnx"
    export_s = None  # what onnxruntime's side needs first: the fp32 graph (timed when made here)
    if not fp32_path.exists():
        log("  export fp32")
        t = time.perf_counter()
        export_onnx(model, fp32_path, example_inputs=(x,))
        export_s = time.perf_counter() - t
    ours = {"compile": [], "fold": [], "compile_untraced": []}
    theirs = []
    nodes = layers = 0
    for r in range(-1, s.repeats):  # round -1: the warm-up, not recorded
        log(
            f"  round {r + 1} of {s.repeats}: ours, then onnxruntime's quantizer"
            if r >= 0
            else "  warm-up round"
        )
        fresh = copy.deepcopy(model)
        gc.collect()  # each timed step starts without the previous round's garbage to collect
        t = time.perf_counter()
        lrc.compile(fresh, POLICY, example_inputs=(x,))
        ours["compile"].append(time.perf_counter() - t)
        gc.collect()
        t = time.perf_counter()
        folded = lrc.fold(fresh, zeros="split")
        ours["fold"].append(time.perf_counter() - t)
        layers = lrc.compile_info(folded).stats["fold"]["folded"]
        del fresh, folded
        fresh = copy.deepcopy(model)
        gc.collect()
        t = time.perf_counter()
        lrc.compile(fresh, POLICY, trace_mode="modules")
        ours["compile_untraced"].append(time.perf_counter() - t)
        del fresh
        proto = onnx.load(str(fp32_path))
        q = MatMulNBitsQuantizer(proto, bits=4, block_size=32, is_symmetric=False, accuracy_level=4)
        gc.collect()
        t = time.perf_counter()
        q.process()
        theirs.append(time.perf_counter() - t)
        nodes = sum(n.op_type == "MatMulNBits" for n in q.model.model.graph.node)
        del q, proto
    ours = {k: v[1:] for k, v in ours.items()}  # drop the warm-up
    theirs = theirs[1:]
    linears = [
        m for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]  # all targeted: blocks and head
    fp32_bytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    weights = sum(m.weight.numel() for m in linears)
    med = {k: statistics.median(v) for k, v in ours.items()}
    ours_s = statistics.median(c + f for c, f in zip(ours["compile"], ours["fold"]))
    untraced_s = statistics.median(c + f for c, f in zip(ours["compile_untraced"], ours["fold"]))
    ort_s = statistics.median(theirs)
    return {
        "params": params,
        "fp32_weight_bytes": fp32_bytes,
        "weights": weights,
        "our_layers": layers,
        "ort_layers": nodes,
        "compile_s": med["compile"],
        "fold_s": med["fold"],
        "ours_s": ours_s,
        "ort_s": ort_s,
        "compile_untraced_s": med["compile_untraced"],
        "fp32_export_s": export_s,
        "untraced_gbps": fp32_bytes / untraced_s / 1e9,
        "ours_gbps": fp32_bytes / ours_s / 1e9,
        "ort_gbps": fp32_bytes / ort_s / 1e9,
        "samples": {**ours, "ort": theirs},
        "threads": torch.get_num_threads(),
        "settings": dataclasses.asdict(s),
    }
