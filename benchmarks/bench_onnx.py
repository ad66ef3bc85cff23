"""INT4 ONNX latency and size: our export vs onnxruntime's own quantizer vs fp32, side by side.

    python benchmarks/bench_onnx.py [--hidden 2048] [--layers 2] [--runs 12] [--out DIR]

A Llama-shaped model (random weights; speed does not depend on them) with every linear
layer targeted, head included (small vocabulary, so the blocks dominate):

- fp32: the float model exported as is;
- ort-rtn: onnxruntime's ``MatMulNBitsQuantizer`` on that fp32 file (INT4, block 32,
  asymmetric): the same MatMulNBits kernel;
- ours-int: QA-LoRA trained with integer zero points (adapters set to random values, as
  after training), folded, exported as MatMulNBits: integer zero points;
- ours-split: QA-LoRA with float zero points, folded ``split`` (integer zeros + correction);
- ours-qdq: ours-int exported as standard DequantizeLinear + MatMul (onnxruntime fuses it).

All sessions use one intra-op thread and accuracy level 4 (int8 activations) unless the
row says acc0; runs are interleaved across sessions per shape. Reports median latency per
(batch, seq), ratios to ort-rtn and fp32, and the bytes of the linear-layer weights.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

import lowrank_compiler as lrc

SHAPES = [(1, 1), (1, 16), (8, 1), (8, 16)]


def build(hidden: int, layers: int, seed: int = 0) -> torch.nn.Module:
    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75) // 32 * 32,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=hidden // 128,
        vocab_size=512,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def ours(hidden, layers, zero_point, zeros, x):
    model = build(hidden, layers)
    lrc.compile(
        model,
        lrc.Policy(
            method="qalora",
            zero_point=zero_point,
            target=["all-linear", "lm_head"],
            bits=4,
            group_size=32,
            rank=16,
        ),
        example_inputs=(x,),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # adapters as after training: zero points really move
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return lrc.fold(model, zeros=zeros)


def with_accuracy_level(src: Path, dst: Path, level: int) -> Path:
    m = onnx.load(str(src))
    for node in m.graph.node:
        for a in node.attribute:
            if node.op_type == "MatMulNBits" and a.name == "accuracy_level":
                a.i = level
    onnx.save(m, str(dst))
    return dst


def session(path: Path, level: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(level))
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def linear_bytes(path: Path) -> int:
    """Bytes of initializers that are linear weights: 2-D+ float matrices fed to MatMul, or INT-N
    codes, scales, zero points and corrections."""
    m = onnx.load(str(path))
    feeds = {}
    for n in m.graph.node:
        if n.op_type in ("MatMul", "MatMulNBits", "DequantizeLinear"):
            for i in n.input[1:] if n.op_type == "MatMul" else n.input:
                feeds[i] = n.op_type
    total = 0
    for t in m.graph.initializer:
        if t.name in feeds or t.name.endswith(".correction"):
            if feeds.get(t.name) == "MatMul" and len(t.dims) < 2:
                continue
            total += (
                onnx.numpy_helper.to_array(t).nbytes
                if t.data_type != onnx.TensorProto.UINT4
                else len(t.raw_data)
            )
    return total


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument(
        "--out", default=None, help="keep the ONNX files here (default: a temporary folder)"
    )
    args = ap.parse_args(argv)
    # the quantizer's optimizer logs every merge
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_onnx_"))
    out.mkdir(parents=True, exist_ok=True)
    x = torch.randint(2, 512, (2, 8))

    t = time.perf_counter()
    files = write_files(args.hidden, args.layers, x, out)
    prep = time.perf_counter() - t
    results = latencies(files, args.runs)
    sizes = {k: linear_bytes(p) for k, p in files.items()}
    worst = print_table(args, files, results, sizes, prep)
    return {"latency_ms": results, "linear_bytes": sizes, "worst_vs_ort": worst}


def write_files(hidden: int, layers: int, x: torch.Tensor, out: Path) -> dict[str, Path]:
    """Every row's ONNX file in ``out``, traced on ``x``: fp32, onnxruntime's INT4, ours three
    ways, and two at accuracy level 0."""
    fp32 = build(hidden, layers)
    files = {"fp32": lrc.export_onnx(fp32, out / "fp32.onnx", example_inputs=(x,))}
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        str(files["fp32"]), bits=4, block_size=32, is_symmetric=False, accuracy_level=4
    )
    q.process()
    q.model.save_model_to_file(str(out / "ort_rtn.onnx"))
    files["ort-rtn"] = out / "ort_rtn.onnx"
    files["ours-int"] = lrc.export_onnx(
        ours(hidden, layers, "int", "split", x),
        out / "ours_int.onnx",
        example_inputs=(x,),
        accuracy_level=4,
    )
    files["ours-split"] = lrc.export_onnx(
        ours(hidden, layers, "float", "split", x),
        out / "ours_split.onnx",
        example_inputs=(x,),
        accuracy_level=4,
    )
    files["ours-qdq"] = lrc.export_onnx(
        ours(hidden, layers, "int", "split", x),
        out / "ours_qdq.onnx",
        example_inputs=(x,),
        format="qdq",
        accuracy_level=4,
    )
    files["ort-rtn acc0"] = with_accuracy_level(files["ort-rtn"], out / "ort_rtn_acc0.onnx", 0)
    files["ours-int acc0"] = with_accuracy_level(files["ours-int"], out / "ours_int_acc0.onnx", 0)
    return files


def latencies(files: dict[str, Path], runs: int) -> dict[str, dict]:
    """{row: {(batch, seq): median ms}}; per shape, the sessions take turns run by run."""
    levels = {k: 0 if "acc0" in k else 4 for k in files}
    sessions = {k: session(p, levels[k]) for k, p in files.items()}
    results: dict[str, dict] = {k: {} for k in files}
    for batch, seq in SHAPES:
        feed = {
            "input_ids": np.random.default_rng(0).integers(2, 512, (batch, seq), dtype=np.int64)
        }
        samples = {k: [] for k in sessions}
        for k, s in sessions.items():
            s.run(None, feed)  # warm-up
        for _ in range(runs):
            for k, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, feed)
                samples[k].append(time.perf_counter() - t0)
        for k in sessions:
            results[k][(batch, seq)] = 1000 * statistics.median(samples[k])
    return results


def print_table(args, files: dict, results: dict, sizes: dict, prep: float) -> dict[str, float]:
    """Print the markdown table and the worst ratios to ort-rtn; return those ratios."""
    print(
        f"Llama-shaped, hidden {args.hidden}, {args.layers} layers, INT4 g32; onnxruntime "
        f"{ort.__version__}, "
        f"1 thread, median of {args.runs} interleaved runs (prepared in {prep:.0f} s)"
    )
    head = " | ".join(f"b{b} s{s}" for b, s in SHAPES)
    print(f"| model | {head} | vs ort-rtn (b1 s1) | vs fp32 (b1 s1) | linear bytes vs fp32 |")
    print("| --- |" + " --- |" * (len(SHAPES) + 3))
    for k in files:
        row = " | ".join(f"{results[k][sh]:.2f} ms" for sh in SHAPES)
        ref = "ort-rtn acc0" if "acc0" in k else "ort-rtn"
        print(
            f"| {k} | {row} | {results[k][SHAPES[0]] / results[ref][SHAPES[0]]:.2f}x | "
            f"{results[k][SHAPES[0]] / results['fp32'][SHAPES[0]]:.2f}x | "
            f"{sizes[k] / sizes['fp32']:.3f}x |"
        )
    worst = {
        k: max(results[k][sh] / results["ort-rtn"][sh] for sh in SHAPES)
        for k in ("ours-int", "ours-split", "ours-qdq")
    }
    print(
        "worst ratio to ort-rtn over the shapes: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in worst.items())
    )
    return worst


if __name__ == "__main__":
    main()
