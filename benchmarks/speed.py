"""3-4. Size and CPU inference speed: our INT4 export vs onnxruntime's quantizer vs fp32.

A Llama-shaped model (``bench_onnx.build``: random weights, speed does not depend on
them; vocabulary 512 so the blocks dominate), every linear layer targeted, head included:

- fp32: the float model exported as is; and the same model in PyTorch eager mode;
- ort-rtn: onnxruntime's ``MatMulNBitsQuantizer`` on the fp32 file (INT4, group 32, asymmetric);
- ours-int: QA-LoRA trained with integer zero points (adapters set as after training), folded;
- ours-split: QA-LoRA with float zero points, folded ``split`` (integer zeros + correction);
- ours-qdq: ours-int as standard DequantizeLinear + MatMul (onnxruntime fuses it);
- ort-rtn-again: onnxruntime's file once more, in its own session (an A/A control).

Every INT4 file runs at accuracy level 0 (fp32 compute) and 4 (int8 activations): for
MatMulNBits files a copy with the node attribute set, for the QDQ file the session
option. All sessions and PyTorch use ``threads`` intra-op threads. Per (batch, seq) every
runner runs in turn, ``repeats`` rounds (after one warm-up round at the first shape); medians.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from lowrank_compiler import export_onnx
from lowrank_compiler.app.jobs.encoder import ort_quantize
from lowrank_compiler.runtime.onnx.export import set_accuracy_level

from . import bench_onnx
from .common import check_settings, interleaved
from .onnx_bytes import file_bytes, linear_weights

VOCAB = 512
INT4 = ("ort-rtn", "ours-int", "ours-split", "ours-qdq")


@dataclass(frozen=True)
class Settings:
    hidden: int = 2048
    layers: int = 2
    shapes: tuple[tuple[int, int], ...] = (
        (1, 1),
        (1, 16),
        (1, 128),
        (8, 128),
    )  # 1 x 1: one decoding step
    repeats: tuple[int, ...] = (15, 15, 9, 5)  # per shape: the large ones take seconds a run
    threads: int = 1
    formats: tuple[str, ...] = ("int", "split", "qdq")  # ours
    control: bool = (
        True  # onnxruntime's file in a second session too: the noise of a ratio of equals
    )

    def __post_init__(self):
        check_settings(
            "speed",
            hidden=self.hidden,
            layers=self.layers,
            shapes=self.shapes,
            repeats=self.repeats,
            threads=self.threads,
        )
        check_model("speed", self.hidden, self.formats)
        if len(self.repeats) != len(self.shapes):
            raise ValueError(
                f"speed.repeats needs one count per shape ({len(self.shapes)}), got "
                f"{self.repeats!r}"
            )


def check_model(where: str, hidden: int, formats: tuple[str, ...]) -> None:
    if hidden % 128:
        raise ValueError(f"{where}.hidden must be a multiple of 128 (heads of 128), got {hidden!r}")
    if not formats or not set(formats) <= {"int", "split", "qdq"}:
        raise ValueError(
            f"{where}.formats must be drawn from ('int', 'split', 'qdq'), got {formats!r}"
        )


def session(path: Path, level: int, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if (
        threads > 1
    ):  # idle pool threads spin by default, stealing the cores of the session that runs next
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(level))
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_rtn(src: Path, dst: Path) -> Path:
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    return ort_quantize(src, dst, bits=4, group_size=32)  # accuracy level 0


def prepare(
    hidden: int, layers: int, work: Path, log, formats=("int", "split", "qdq")
) -> dict[str, Path]:
    """The ONNX files (reused when a section before wrote them): each INT4 one at accuracy
    level 0, and for MatMulNBits files a copy at level 4 (``<name>_acc4``)."""
    x = torch.randint(2, VOCAB, (2, 8))
    tag = f"llama{hidden}x{layers}"
    files = {"fp32": work / f"{tag}_fp32.onnx"}
    if not files["fp32"].exists():
        log(f"  export fp32 ({tag})")
        export_onnx(bench_onnx.build(hidden, layers), files["fp32"], example_inputs=(x,))
    files["ort-rtn"] = work / f"{tag}_ort_rtn.onnx"
    if not files["ort-rtn"].exists():
        log("  onnxruntime's quantizer")
        ort_rtn(files["fp32"], files["ort-rtn"])
    model = None
    for fmt in ("int", "qdq", "split"):
        if fmt not in formats:
            continue
        path = files[f"ours-{fmt}"] = work / f"{tag}_ours_{fmt}.onnx"
        if path.exists():
            continue
        if fmt == "split":
            log("  ours (split): compile, fold")
            model = bench_onnx.ours(hidden, layers, "float", "split", x)
        elif model is None:  # int and qdq: one model, two formats
            log("  ours (integer zeros): compile, fold")
            model = bench_onnx.ours(hidden, layers, "int", "split", x)
        log(f"  ours ({fmt}): export")
        export_onnx(
            model, path, example_inputs=(x,), format="qdq" if fmt == "qdq" else "matmulnbits"
        )
    del model
    for name in ("ort-rtn", "ours-int", "ours-split"):
        if name in files:
            acc4 = files[name].with_name(files[name].stem + "_acc4.onnx")
            files[f"{name}_acc4"] = (
                acc4 if acc4.exists() else set_accuracy_level(files[name], acc4, 4)
            )
    return files


def runners_for(
    files: dict[str, Path], threads: int, levels=(0, 4), control: bool = False
) -> dict[str, ort.InferenceSession]:
    """``name/accN`` -> session; fp32 as ``fp32``; with ``control``, ``ort-rtn-again/accN``: a
    second session on onnxruntime's own file, whose ratio to the first is what two equal
    files measure as (the noise a ratio target is read against)."""
    out = {"fp32": session(files["fp32"], 0, threads)}
    for name in (*INT4, "ort-rtn-again") if control else INT4:
        source = "ort-rtn" if name == "ort-rtn-again" else name
        if source not in files:
            continue
        for level in levels:
            path = (
                files[f"{source}_acc4"]
                if level == 4 and f"{source}_acc4" in files
                else files[source]
            )
            out[f"{name}/acc{level}"] = session(path, level, threads)
    return out


def run(s: Settings, work: Path, log) -> dict:
    started = time.perf_counter()
    log(f"speed: Llama-shaped, hidden {s.hidden}, {s.layers} layers")
    files = prepare(s.hidden, s.layers, work, log, s.formats)
    prep_s = time.perf_counter() - started
    sessions = runners_for(files, s.threads, control=s.control)
    eager = bench_onnx.build(s.hidden, s.layers)
    params = sum(p.numel() for p in eager.parameters())
    threads_before = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    latency: dict[str, dict[str, float]] = {k: {} for k in [*sessions, "torch-fp32"]}
    try:
        for i, ((batch, seq), repeats) in enumerate(zip(s.shapes, s.repeats)):
            log(
                f"  batch {batch} x seq {seq}: {len(latency)} runners interleaved, {repeats} rounds"
            )
            ids = np.random.default_rng(0).integers(2, VOCAB, (batch, seq), dtype=np.int64)
            feed, ids_t = {"input_ids": ids}, torch.from_numpy(ids)
            runners = {k: (lambda sess=sess: sess.run(None, feed)) for k, sess in sessions.items()}

            def torch_run():
                with torch.inference_mode():
                    eager(ids_t, use_cache=False)

            runners["torch-fp32"] = torch_run
            # one warm-up round before the first shape; later shapes run for long enough that
            # a first call's allocations do not matter (and their rounds are the costly ones)
            for k, v in interleaved(runners, repeats, warmup=1 if i == 0 else 0).items():
                latency[k][f"{batch}x{seq}"] = v
    finally:
        torch.set_num_threads(threads_before)
    sizes = {
        k: (file_bytes(p), *linear_weights(p)) for k, p in files.items() if not k.endswith("_acc4")
    }
    return {
        "latency_s": latency,
        "sizes": sizes,
        "params": params,
        "prepare_s": prep_s,
        "settings": dataclasses.asdict(s),
        "ort_threads": s.threads,
    }
