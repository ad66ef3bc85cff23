"""How the LLM job's rows become onnxruntime-genai folders: ours through ``export_genai``, the
peers' through onnxruntime-genai's model builder, or, where the builder cannot deploy the model,
its stand-in.

The model builder (``python -m onnxruntime_genai.models.builder``, INT4, asymmetric, block =
the job's group size, accuracy level 0, ``lm_head`` left float as ours leaves it) runs offline on
the model saved with its tokenizer. Its folder is used only if onnxruntime-genai then generates
from it: for stories260K it does not (head size 8: its GroupQueryAttention refuses it on the
CPU), so the row takes the stand-in, and says so: onnxruntime's ``MatMulNBitsQuantizer`` (the
builder's own quantizer: RTN, asymmetric, the same block) applied to the fp32 folder we export,
the same grid in the same MatMulNBits layout. The builder's adapter route is its INT4 base with
the LoRA unmerged beside each layer (``adapter_path``: the adapters saved as a PEFT folder, which
the builder writes into ``model.onnx`` as INT4 A and B MatMulNBits and an Add); where the builder
cannot deploy the model its stand-in is that graph written by ``export_genai``: each layer a
MatMulNBits of the RTN base plus the adapter's float ``A`` and ``B`` MatMuls.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import onnx
import onnx.numpy_helper
import torch

from ...genai import export_genai
from ...peft_io import save_peft_adapter
from ...runtime.digests import folder_digests
from ...runtime.files import write_atomic
from ...runtime.layers.int_linear import IntLinear
from ...runtime.layers.lora import LoRALinear
from ...runtime.onnx.export import set_accuracy_level
from ...runtime.quant.formats import FOLDER_RECORD
from .llm_config import hf_quiet

STANDIN = "stand-in: onnxruntime's quantizer on our fp32 export"
STANDIN_ADAPTER = "stand-in: export_genai of the adapter graph (RTN INT4 base, float A and B)"


def export(model, folder: Path, tokenizer, unmerged: bool = False) -> Path:
    """Our genai folder at accuracy level 0 (the level the perplexities are measured at)."""
    if folder.exists():
        shutil.rmtree(folder)
    return export_genai(model, folder, tokenizer=tokenizer, accuracy_level=0, unmerged=unmerged)


def at_level(src: Path, dst: Path, level: int) -> None:
    """``src`` with every MatMulNBits at accuracy ``level``: ours with its metadata saying so too,
    the model builder's by its graph alone (``set_accuracy_level(foreign=True)``)."""
    set_accuracy_level(src, dst, level, foreign=not (src.parent / FOLDER_RECORD).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("model.onnx*"))


def weight_bytes(folder: Path) -> int:
    """The bytes of ``model.onnx``'s initializers: the file less its graph and the source
    locations torch records per node (most of a model this small's file)."""
    graph = onnx.load(str(folder / "model.onnx")).graph
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in graph.initializer)


def builder_folder(model, tokenizer, folder: Path, group: int, known: dict) -> tuple[Path, str]:
    """The model builder's INT4 folder of float ``model``, or the stand-in; (folder, how).
    ``known`` keeps why the builder could not deploy this architecture, so a job tries it once."""
    reason = known.get("builder") or _try_builder(model, tokenizer, folder, group)
    if reason is None:
        return folder, "onnxruntime-genai model builder"
    known["builder"] = reason
    export(model, folder, tokenizer)
    _quantize_in_place(folder / "model.onnx", group)
    return folder, f"{STANDIN} (the builder's file {reason})"


def builder_adapter_folder(
    lora_model, load_base, tokenizer, folder: Path, cfg, known: dict
) -> tuple[Path, str]:
    """The builder's INT4 folder of the float base (``load_base()``) with ``lora_model``'s LoRA
    unmerged (``adapter_path``), or the stand-in graph (``adapter_route``); (folder, how)."""
    reason = known.get("builder")
    if reason is None:
        with tempfile.TemporaryDirectory() as tmp:
            peft_dir = save_peft_adapter(lora_model, Path(tmp) / "lora")
            reason = _try_builder(load_base(), tokenizer, folder, cfg.group_size, peft_dir)
        if reason is None:
            return folder, "onnxruntime-genai model builder, adapter_path"
    export(adapter_route(lora_model, cfg.bits, cfg.group_size), folder, tokenizer, unmerged=True)
    return folder, f"{STANDIN_ADAPTER} (the builder's file {reason})"


# one greedy step in a fresh process: onnxruntime's own error lines stay out of the job's output
GENERATES = """import sys, onnxruntime_genai as og
m = og.Model(sys.argv[1]); p = og.GeneratorParams(m); p.set_search_options(max_length=4)
g = og.Generator(m, p); g.append_tokens([[int(sys.argv[2]), 2]]); g.generate_next_token()
"""


def _try_builder(model, tokenizer, folder: Path, group: int, adapter=None) -> str | None:
    """None when the builder wrote a folder that onnxruntime-genai generates from; else why not.
    ``adapter``: a PEFT LoRA folder the builder writes unmerged beside each layer."""
    if importlib.util.find_spec("onnxruntime_genai") is None:
        return "cannot be run: onnxruntime-genai is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        with hf_quiet():
            model.save_pretrained(hf_dir, safe_serialization=True)
        tokenizer.save_pretrained(hf_dir)
        if folder.exists():
            shutil.rmtree(folder)
        extra = [
            "is_symmetric=false",
            f"block_size={group}",
            "accuracy_level=0",
            "nodes_to_exclude=/lm_head/MatMul",
        ] + ([f"adapter_path={adapter}"] if adapter else [])
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir)]
        cmd += ["-o", str(folder), "-p", "int4", "-e", "cpu", "-c", str(Path(tmp) / "cache")]
        done = subprocess.run([*cmd, "--extra_options", *extra], capture_output=True, text=True)
        if done.returncode != 0:
            return f"was not written: {_last_line(done.stderr or done.stdout)}"
    bos = str(tokenizer.bos_token_id or 1)
    done = subprocess.run(
        [sys.executable, "-c", GENERATES, str(folder), bos], capture_output=True, text=True
    )
    if done.returncode != 0:
        return f"does not run in onnxruntime-genai: {_last_line(done.stderr or done.stdout)}"
    return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else "no message"
    return line[:200]


def _quantize_in_place(path: Path, group: int) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # a line per node
    model = onnx.load(str(path))
    logits = model.graph.output[0].name
    head = [n.name for n in model.graph.node if n.op_type == "MatMul" and logits in n.output]
    q = MatMulNBitsQuantizer(
        model, bits=4, block_size=group, is_symmetric=False, accuracy_level=0, nodes_to_exclude=head
    )
    q.process()
    q.model.save_model_to_file(str(path))
    record_path = path.parent / FOLDER_RECORD
    record = json.loads(record_path.read_text())
    record["sha256"] = folder_digests(path.parent, list(record["sha256"]))
    record["writer_note"] = "model.onnx quantized by onnxruntime's MatMulNBitsQuantizer"
    write_atomic(record_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def model_copy(model):
    """A deep copy, without the FutureWarning torch gives for the traced graph's tree specs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec", FutureWarning)
        return copy.deepcopy(model)


def adapter_route(lora_model, bits: int, group: int):
    """The builder's adapter graph: each LoRA layer's base as an RTN INT4 ``IntLinear`` (the
    builder's grid), the trained ``A`` and ``B`` unmerged beside it."""
    model = model_copy(lora_model)
    for module in model.modules():
        if isinstance(module, LoRALinear) and isinstance(module.base, torch.nn.Linear):
            module.base = IntLinear.from_float(module.base, bits=bits, group_size=group)
    return model
