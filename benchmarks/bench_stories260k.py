"""Perplexity of INT4 files of the real stories260K: ours (RTN INT4 g32, untrained) against
onnxruntime's quantizer on the same grid, on text sampled from the fp32 model.

    python -m benchmarks.bench_stories260k [--sequences 32] [--length 128]

The peer row the LLM route would take is onnxruntime-genai's model builder (INT4, block 32,
asymmetric). On this model its file does not run (head size 8: its GroupQueryAttention refuses it
on the CPU; with tied embeddings its INT4 file does not load at all: docs/benchmarks.md), so the
builder's own quantizer stands in for it: onnxruntime's ``MatMulNBitsQuantizer`` (RTN, asymmetric,
block 32) on a plain fp32 export. Twice: on the tied model (the head reads the table through a
Transpose, which the quantizer leaves float, as our ``all-linear`` does) and on an untied copy
(the builder writes a tied ``lm_head`` as its own INT4 MatMul; ours then targets ``lm_head`` by
name). Same grid, same rounding: each pair must agree within 1% (``BOUND``); the script prints
PASS or FAIL against it and exits with status 1 on FAIL.

Text: ``--sequences`` samples of ``--length`` tokens from BOS, temperature 1, seeded, from the
fp32 model; perplexity = exp(mean next-token negative log-likelihood), every file run by
onnxruntime at accuracy level 0 on the same tokens.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

import lowrank_compiler as lrc
from lowrank_compiler.app.pretrained import load_stories260k

BOUND = 0.01  # ours / onnxruntime's perplexity, each pair: within 1%


def sample(model, sequences: int, length: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    bos = torch.full((sequences, 1), model.config.bos_token_id)
    with torch.no_grad():
        out = model.generate(
            bos,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=length - 1,
            min_new_tokens=length - 1,
            pad_token_id=0,
        )
    return out[:, :length]


def perplexity(logits: np.ndarray, ids: torch.Tensor) -> float:
    logp = torch.log_softmax(torch.from_numpy(logits).double()[:, :-1], -1)
    nll = -logp.gather(-1, ids[:, 1:, None]).mean()
    return float(torch.exp(nll))


def run_file(path: Path, ids: torch.Tensor) -> np.ndarray:
    session = lrc.runtime.load(path)
    out = session(ids.numpy())
    return out[0] if isinstance(out, (list, tuple)) else out


def ort_int4(fp32: Path, out: Path) -> tuple[Path, int]:
    """onnxruntime's quantizer on ``fp32`` (every MatMul with a constant weight); returns the file
    and how many MatMuls it made INT4."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # a line per node
    q = MatMulNBitsQuantizer(
        onnx.load(str(fp32)), bits=4, block_size=32, is_symmetric=False, accuracy_level=0
    )
    q.process()
    q.model.save_model_to_file(str(out))
    return out, sum(n.op_type == "MatMulNBits" for n in onnx.load(str(out)).graph.node)


def untied(model):
    """The head with its own copy of the table, as the builder writes a tied ``lm_head``."""
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return model


def files(ids, work: Path) -> dict[str, tuple[Path, int]]:
    example = (ids[:2, :8],)
    float_model, _ = load_stories260k()
    fp32 = lrc.export_onnx(float_model, work / "fp32.onnx", example_inputs=example)
    fp32_untied = lrc.export_onnx(untied(float_model), work / "fp32_u.onnx", example_inputs=example)
    rows = {"fp32 (onnxruntime)": (fp32, 0)}
    for head, target in (("head float", ["all-linear"]), ("head INT4", ["all-linear", "lm_head"])):
        model, _ = load_stories260k()
        lrc.compile(model, lrc.Policy(method="rtn", target=target), example_inputs=example)
        path = lrc.export_onnx(model, work / f"ours_{len(target)}.onnx")
        rows[f"ours: RTN INT4 g32, {head}"] = (path, 34 + len(target))
    # the tied head reads the table through a Transpose, which the quantizer skips: head float
    rows["onnxruntime quantizer INT4 g32 asym, head float"] = ort_int4(fp32, work / "ort.onnx")
    rows["onnxruntime quantizer INT4 g32 asym, head INT4 (untied, as the builder)"] = ort_int4(
        fp32_untied, work / "ort_u.onnx"
    )
    return rows


def outside(ratios: dict[str, float]) -> list[str]:
    """The pairs whose perplexity ratio is further than ``BOUND`` from 1 (or not a number)."""
    return [head for head, r in ratios.items() if not abs(r - 1.0) <= BOUND]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    args = ap.parse_args(argv)
    from benchmarks.common import machine, machine_line

    float_model, _ = load_stories260k()
    ids = sample(float_model, args.sequences, args.length)
    with tempfile.TemporaryDirectory() as tmp:
        rows = files(ids, Path(tmp))
        ppl = {name: perplexity(run_file(path, ids), ids) for name, (path, _) in rows.items()}
    print(machine_line(machine()))
    print(f"stories260K, {args.sequences} sampled sequences x {args.length} tokens")
    print("| file | INT4 MatMuls | perplexity | vs fp32 |")
    print("| --- | --- | --- | --- |")
    base = ppl["fp32 (onnxruntime)"]
    for name, (_, count) in rows.items():
        print(f"| {name} | {count} | {ppl[name]:.4f} | {ppl[name] / base:.4f}x |")
    names = list(rows)
    ratios = {
        "head float": ppl[names[1]] / ppl[names[3]],
        "head INT4": ppl[names[2]] / ppl[names[4]],
    }
    for head, r in ratios.items():
        print(f"ours / onnxruntime's, {head}: {r:.4f}")
    failed = outside(ratios)
    if failed:
        print(f"FAIL: outside {BOUND:.0%} of onnxruntime's: {', '.join(failed)}")
    else:
        print(f"PASS: every pair within {BOUND:.0%}")
    return {
        "perplexity": ppl,
        "ours_over_onnxruntime": ratios,
        "int4_matmuls": {k: v[1] for k, v in rows.items()},
        "passed": not failed,
    }


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
