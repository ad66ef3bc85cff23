"""``export_adapter``: a fine-tune over an INT4 base, written as only what differs from the base.

QA-LoRA folded with integer zero points (``zero_point="int"``, ``fold(zeros="round")``) changes
nothing but each group's zero point, and with ``train_scales`` its scale: the 4-bit codes are the
base's, bit for bit. So N fine-tunes share one set of codes and each adapter is its zero points
(plus scales):

    W_t = s_t * (q - z_t)      q: the base's codes; z_t, s_t: fine-tune t's (N, K / g) values

The adapter is written in onnxruntime's adapter format (``.onnx_adapter``); beside it,
``<file>.json`` ties it to its base: the base's weights digest, the policy, each tensor. Two
kinds of base folder (``export_genai``) take it:

- written with ``adapter_inputs="zeros"`` (or ``"zeros+scales"``; accuracy level 0): the zero
  points are overridable inputs, so onnxruntime-genai's ``og.Adapters`` /
  ``generator.set_active_adapter`` and ``DecoderSession.load_adapter`` swap adapters in one
  session;
- any other MatMulNBits folder (level 4 included): ``DecoderSession.load_adapter`` gives each
  adapter its own session with the adapter's tensors as constants (``runtime.serve.adapters``),
  decoding at the base's speed for the memory of one more prepacked copy.

The weights digest of the two kinds is the same, so one adapter file fits both.

How: the folded model is exported as its base was (format, accuracy level, attention, context,
float type, embeddings: read from the base folder), so every tensor has the base's name and
layout (fused q/k/v included); then the two files are compared tensor by tensor. A tensor that
is not a MatMulNBits zero point (or scale, where the base allows it) and differs (the codes of
another base, another group size, a ``split`` fold's corrections), or is one of another element
type or shape (a ``float`` fold's float zero points), is refused, naming the first such layer.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from .api import compile_info
from .runtime.errors import ExportError
from .runtime.files import commit, staged_file, write_atomic
from .runtime.onnx.file import adapter_tensors, read_model
from .runtime.onnx.integrity import DIGEST
from .runtime.quant.formats import FOLDER_RECORD, METADATA_KEY, adapter_record_path

WRITER = "lowrank_compiler.export_adapter"
INTEGER_ZEROS = (
    "compile the fine-tune with zero_point='int' (any fold is then exact), or fold with "
    "zeros='round' (integer zero points, lossy)"
)
SPLIT = f" (a zeros='split' fold adds correction tensors to float zero points: {INTEGER_ZEROS})"


def export_adapter(model: nn.Module, base: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``model`` (compiled over ``base``'s weights with integer zero points, folded) as an
    adapter of the genai folder ``base`` (or its ``model.onnx``): ``out`` (``.onnx_adapter``) and
    ``out`` + ``.json``. Returns ``out``'s path."""
    base, out = Path(base), Path(out)
    if base.suffix == ".onnx" and base.is_file():  # the folder's file: the folder holds its record
        base = base.parent
    record, base_model = _read_base(base)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _export_like(model, base, record, base_model, Path(tmp) / "adapter")
        mine = read_model(folder / "model.onnx", external_data=True)
        params = _differences(base_model, mine, base)
    base_digest = _digest(base_model)
    _write(out, params, base_digest)
    info = compile_info(model)
    meta = {
        "writer": WRITER,
        "base_weights_sha256": base_digest,
        "base_adapter_inputs": record.get("adapter_inputs", "none"),
        "policy": None if info is None or info.policy is None else info.policy.to_dict(),
        "parameters": {n: [str(a.dtype), list(a.shape)] for n, a in params.items()},
    }
    write_atomic(adapter_record_path(out), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def _read_base(base: Path) -> tuple[dict, onnx.ModelProto]:
    try:
        record = json.loads((base / FOLDER_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(
            f"base {str(base)!r} is not a folder export_genai wrote ({FOLDER_RECORD}: {e}); an "
            "adapter's base is such a folder or its model.onnx, whose record says how to export "
            "the fine-tune like it"
        ) from None
    if record.get("format") != "matmulnbits":
        raise ExportError(
            f"base {str(base)!r} is written with format={record.get('format')!r}: adapters "
            "replace MatMulNBits' zero points, so the base needs format='matmulnbits'"
        )
    return record, read_model(base / "model.onnx", external_data=True)


def _export_like(
    model: nn.Module, base: Path, record: dict, base_model: onnx.ModelProto, folder: Path
) -> Path:
    from .genai import export_genai

    config = json.loads((base / "genai_config.json").read_text(encoding="utf-8"))
    tables = [n for n in base_model.graph.node if n.op_type == "GatherBlockQuantized"]
    group = next(
        (a.i for n in tables for a in n.attribute if a.name == "block_size"),
        32,
    )
    return export_genai(
        model,
        folder,
        format=record["format"],
        accuracy_level=record["accuracy_level"],
        attention="gqa" if record["attention"] == "gqa" else "plain",
        context_length=config["model"]["context_length"],
        dtype=record["dtype"],
        embeddings="int4" if tables else "float",
        embedding_group_size=group,
        adapter_inputs=record.get("adapter_inputs", "none"),
    )


def _differences(base: onnx.ModelProto, mine: onnx.ModelProto, where: Path) -> dict:
    """The swappable tensors whose values differ, as arrays; refuses any other difference. A base
    with overridable inputs allows those; any other base each MatMulNBits' zero points and
    scales (an adapter's own session: ``DecoderSession.load_adapter``)."""
    overridable = {i.name for i in base.graph.input} & {t.name for t in base.graph.initializer}
    if not overridable:
        overridable = set(adapter_tensors(base, scales=True))
    theirs = {t.name: t for t in base.graph.initializer}
    ours = {t.name: t for t in mine.graph.initializer}
    if set(theirs) != set(ours):
        extra = sorted(set(ours) ^ set(theirs))
        split = any(n.endswith(".correction") for n in extra)
        raise ExportError(
            f"the model's graph is not the base's ({str(where)!r}): tensors {extra[:3]} are in "
            "one and not the other; compile the fine-tune from the base's model with its policy"
            + (SPLIT if split else "")
        )
    params = {}
    for name, tensor in ours.items():
        a, b = numpy_helper.to_array(tensor), numpy_helper.to_array(theirs[name])
        if a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b):
            continue
        if name not in overridable:
            raise ExportError(_refusal(name, where, overridable))
        if a.dtype != b.dtype or a.shape != b.shape:
            raise ExportError(_mismatch(name, a, b, where))
        params[name] = a
    return params


def _mismatch(name: str, a: np.ndarray, b: np.ndarray, where: Path) -> str:
    """An overridable tensor of another element type or shape: the runtime (onnxruntime-genai's
    adapters, a session's feeds or constants) takes the base's alone."""
    layer = name.rsplit(".", 1)[0]
    return (
        f"layer {layer!r}: {name!r} is {a.dtype} {list(a.shape)} in the fine-tune, "
        f"{b.dtype} {list(b.shape)} in the base {str(where)!r}; an adapter replaces a tensor by "
        "one of the same type and shape (float zero points are not the base's packed integer "
        f"ones): {INTEGER_ZEROS}"
    )


def _refusal(name: str, where: Path, overridable: set) -> str:
    layer = name.rsplit(".", 1)[0]
    if name.endswith("scales") and not any(n.endswith("scales") for n in overridable):
        return (
            f"layer {layer!r}: its scales differ from the base's (trained scales), and the base "
            f"{str(where)!r} exposes zero points only: write the base with "
            "adapter_inputs='zeros+scales', or without adapter_inputs (each adapter then runs in "
            "its own session of DecoderSession)"
        )
    return (
        f"layer {layer!r}: {name!r} differs from the base's ({str(where)!r}): an adapter may "
        "change zero points (and scales) only, so the 4-bit codes must be the base's; compile over "
        "the same base (same weights, bits, group size, quantizer and calibration) with "
        "zero_point='int' and fold with zeros='round'"
    )


def _digest(model: onnx.ModelProto) -> str:
    prop = next((p for p in model.metadata_props if p.key == METADATA_KEY), None)
    digest = json.loads(prop.value).get(DIGEST) if prop is not None else None
    if digest is None:
        raise ExportError("the base's model.onnx records no weights digest: export it again")
    return digest


def _write(out: Path, params: dict, base_digest: str) -> None:
    import onnxruntime as ort

    from .runtime.serve.adapters import model_version

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(model_version(base_digest))  # checked without the record
    fmt.set_parameters(
        {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for n, a in params.items()}
    )
    with staged_file(out) as tmp:
        fmt.export_adapter(str(tmp))
        commit(tmp, out)


__all__ = ["export_adapter"]
