"""Export a (quantized, folded) model to ONNX with ``torch.onnx`` (dynamo) and write it safely.

Every ``IntLinear`` call becomes one ``com.microsoft::MatMulNBits`` node fed by the layer's own
buffers (``matmulnbits.py``); a ``"split"``-folded layer's correction exports as the plain ops it
is (group sums times ``D^T``). Each layer kind says how it exports (``layers.protocol``): whether
it can (``export_problem``), what is exported in its place (``export_layer``: an unfolded LR-QAT
layer as its exact fold) and how it appears (``lowering``). The graph torch gives then goes
through the ONNX passes (``passes.py``): ``share-table-codes``, ``split-form`` where the format
cannot take float zero points, ``lower-to-qdq`` for ``format="qdq"``, and any the caller adds.

Metadata ``lowrank_compiler`` (JSON in ``metadata_props``) records the format, the
accuracy level, the targeted layers, how each layer was lowered and the sha256 of the weights
(``integrity.py``), for ``inspect`` and ``session.load``. The file is written into a fresh temporary
directory beside the
destination, checked there with ``onnx.checker`` (full check), then renamed into place;
past 2 GB the weights go to ``<name>.data`` beside it (external data), moved in before
the graph. A failed write (disk full, no permission) removes what it wrote and raises
``OutputError``: no partial file is ever left, and an earlier file at that path survives.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ..errors import ExportError
from ..files import commit, staged_file

# registers torch.ops.lowrank_compiler.int_embedding
from ..layers import int_embedding_op  # noqa: F401
from ..layers.protocol import AdapterLayer, Layer, QuantizedLinear
from ..quant.formats import EXPORT_FORMATS, METADATA_KEY, check_accuracy_level
from .file import read_model
from .gather_block_quantized import int_embedding_translation
from .integrity import stamp
from .matmulnbits import int_linear_translation, register_matmulnbits_schema
from .passes import DumpFn, OnnxPassSpec, run_onnx_passes

OPSET = 21  # DequantizeLinear with block_size
_TWO_GB = 2**31 - 2**26  # protobuf's limit, with room for the graph itself


def lowering_of(module: nn.Module, fmt: str) -> str:
    """How one layer appears in the exported graph, in words (the metadata's ``layers`` table)."""
    return module.lowering(fmt) if isinstance(module, Layer) else "float MatMul"


def check_exportable(model: nn.Module, fmt: str) -> None:
    """Raise one ``ExportError`` listing every layer without an ONNX form in ``fmt``."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    problems = [
        f"{name}: {problem}"
        for name, m in model.named_modules()
        if isinstance(m, Layer) and (problem := m.export_problem(fmt))
    ]
    if problems:
        raise ExportError("cannot export:\n  " + "\n  ".join(problems))


def onnx_stage(fmt: str, extra: tuple[OnnxPassSpec, ...] = ()) -> list[OnnxPassSpec]:
    """The ONNX passes an export in ``fmt`` runs, then ``extra`` (the decoder's fusions)."""
    stage = [OnnxPassSpec("share-table-codes"), OnnxPassSpec("split-form", {"format": fmt})]
    if fmt == "qdq":
        stage.append(OnnxPassSpec("lower-to-qdq"))
    return [*stage, *extra]


@contextlib.contextmanager
def _prepared(model: nn.Module, fmt: str):
    """Eval mode and each layer's ``export_layer`` in its place, for the export; undone after."""
    modes = {m: m.training for m in model.modules()}
    swaps = []
    for name, m in list(model.named_modules()):
        replacement = m.export_layer(fmt) if isinstance(m, Layer) else None
        if replacement is not None:
            swaps.append((name, m))
            model.set_submodule(name, replacement)
    model.eval()
    try:
        yield
    finally:
        for name, m in reversed(swaps):
            model.set_submodule(name, m)
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def _quiet():
    """The exporter narrates each step on stdout and logs optional registrations: keep ours
    clean."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            open(os.devnull, "w") as null,
            contextlib.redirect_stdout(null),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def dynamic_shapes(model: nn.Module, args: tuple, kwargs: dict):
    """Batch (dim 0) and sequence (dim 1) of every tensor input are dynamic, shared across
    inputs."""
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")

    def spec(v):
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            return (
                {0: batch, 1: seq}
                if v.dim() >= 2 and not v.is_floating_point() or v.dim() >= 3
                else {0: batch}
            )
        return None

    bound = inspect.signature(model.forward).bind(*args, **kwargs)
    out = {}
    for name, value in bound.arguments.items():
        kind = inspect.signature(model.forward).parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out[name] = {k: spec(v) for k, v in value.items()}
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            out[name] = tuple(spec(v) for v in value)
        else:
            out[name] = spec(value)
    return out


def check_destination(path) -> Path:
    """The output path as a ``Path``; raises before any work when it cannot be a file we write."""
    if not isinstance(path, (str, os.PathLike)):
        raise ExportError(
            f"path must be a str or os.PathLike naming an .onnx file, got {type(path).__name__}"
        )
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(
            f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist"
        )
    if path.is_dir():
        raise ExportError(
            f"cannot write {str(path)!r}: it is a directory; name a file, e.g. "
            f"{str(path / 'model.onnx')!r}"
        )
    return path


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the exporter colours its messages for terminals


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _root_cause(e: BaseException) -> str:
    """The innermost exception's first line (the exporter wraps the model's own error in steps)."""
    seen, inner = {id(e)}, e
    while (inner.__cause__ or inner.__context__) is not None and id(
        inner.__cause__ or inner.__context__
    ) not in seen:
        inner = inner.__cause__ or inner.__context__
        seen.add(id(inner))
    return "" if inner is e else f" (caused by {type(inner).__name__}: {_first_line(inner)})"


def layer_table(model: nn.Module, fmt: str) -> dict[str, str]:
    """Each integer, adapter or float linear layer (outermost only) -> how it is lowered."""
    layers = {
        n: lowering_of(m, fmt)
        for n, m in model.named_modules()
        if isinstance(m, (AdapterLayer, QuantizedLinear, nn.Linear))
    }
    return {
        n: v for n, v in layers.items() if not any(n.startswith(f"{p}.") for p in layers if p != n)
    }


def export_proto(
    model: nn.Module,
    args: tuple,
    kwargs: dict | None = None,
    *,
    fmt: str = "matmulnbits",
    accuracy_level: int = 0,
    dynamic_shapes=None,
    input_names=None,
    output_names=None,
    meta: dict | None = None,
    what: str = "",
    translations: dict | None = None,
    passes: tuple[OnnxPassSpec, ...] = (),
    stage: list[OnnxPassSpec] | None = None,
    dump: DumpFn | None = None,
) -> onnx.ModelProto:
    """``model(*args, **kwargs)`` as an ONNX graph: checks, eval mode, each layer's export form,
    every ``int_linear`` as MatMulNBits, the ONNX stage (``stage``, by default
    ``onnx_stage(fmt, passes)``; ``dump`` hears each pass) and the metadata (``meta`` plus the
    format, level and layer table). Nothing is written. ``translations``: more custom ops ->
    onnxscript functions (``attention.py``)."""
    try:
        check_accuracy_level(accuracy_level)
    except ValueError as e:
        raise ExportError(str(e)) from None
    check_exportable(model, fmt)
    register_matmulnbits_schema()
    layers = layer_table(model, fmt)
    table = {
        torch.ops.lowrank_compiler.int_linear.default: int_linear_translation(accuracy_level),
        torch.ops.lowrank_compiler.int_embedding.default: int_embedding_translation(),
        **(translations or {}),
    }
    with _prepared(model, fmt), torch.no_grad(), _quiet():
        try:
            program = torch.onnx.export(
                model,
                args,
                kwargs=kwargs,
                dynamo=True,
                opset_version=OPSET,
                custom_translation_table=table,
                dynamic_shapes=dynamic_shapes,
                input_names=input_names,
                output_names=output_names,
                optimize=True,
            )
        except Exception as e:
            raise ExportError(
                f"torch.onnx export of {type(model).__name__}{what} failed: {_first_line(e)}"
                f"{_root_cause(e)}. Check that the example inputs run the model; with "
                "dynamic=True, "
                f"use batch and sequence sizes of at least 2"
            ) from e
    stage = onnx_stage(fmt, passes) if stage is None else stage
    proto, _ = run_onnx_passes(program.model_proto, stage, dump=dump)
    record = {"format": fmt, "accuracy_level": accuracy_level, "layers": layers, **(meta or {})}
    record.setdefault("targets", sorted(layers))
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(record, sort_keys=True))
    return proto


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    args: tuple,
    kwargs: dict,
    fmt: str = "matmulnbits",
    accuracy_level: int = 0,
    dynamic: bool = True,
    targets: list[str] | None = None,
    dump: DumpFn | None = None,
) -> Path:
    """Export ``model(*args, **kwargs)`` (``export_proto``) and write it to ``path`` whole."""
    path = check_destination(path)
    shapes = dynamic_shapes(model, args, kwargs) if dynamic else None
    meta = {"targets": sorted(targets)} if targets is not None else None
    proto = export_proto(
        model,
        args,
        kwargs,
        fmt=fmt,
        accuracy_level=accuracy_level,
        dynamic_shapes=shapes,
        meta=meta,
        dump=dump,
    )
    if dynamic:
        name_dynamic_dims(proto)
    write_model(proto, path)
    return path


def name_dynamic_dims(proto: onnx.ModelProto) -> None:
    """The exporter's symbols (``s72``) become ``batch`` and ``seq`` wherever they appear."""
    rename = {}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, label in zip(range(len(dims)), ("batch", "seq")):
            if dims[axis].dim_param and dims[axis].dim_param not in rename:
                rename[dims[axis].dim_param] = label
    rename_dims(proto, rename)


def rename_dims(proto: onnx.ModelProto, rename: dict[str, str]) -> None:
    """Rename symbolic dimensions (``s72`` -> ``batch``) in every input, output and value info."""
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


def write_model(proto: onnx.ModelProto, path: Path) -> None:
    """Stamp the weights' digest (``integrity.stamp``), stage beside ``path``, full check, commit
    the data file then the graph (module docstring)."""
    stamp(proto)
    external = proto.ByteSize() > _TWO_GB
    data = path.name + ".data"  # the location recorded in the graph: relative, beside the file
    with staged_file(path) as staged:
        onnx.save_model(
            proto,
            str(staged),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=data,
            size_threshold=1024,
        )
        try:
            onnx.checker.check_model(str(staged), full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(
                f"the exported graph for {str(path)!r} fails onnx.checker: {e}"
            ) from e
        if external:
            commit(staged.with_name(data), path.with_name(data))
        commit(staged, path)


def set_accuracy_level(
    src: str | os.PathLike, dst: str | os.PathLike, level: int, *, foreign: bool = False
) -> Path:
    """Copy an exported file with every MatMulNBits node's ``accuracy_level`` set to ``level``.

    The weights are untouched; only the kernel's compute precision changes (0: fp32,
    4: int8 activations). For standard QDQ files the session option does this instead.
    foreign: a file another tool wrote (onnxruntime-genai's model builder): only its graph is
    rewritten, its weights stay in their data file (``dst``'s folder must hold it: beside
    ``src``, or a copy of its folder), and onnx.checker, which does not know every contrib op
    such files hold, is not run.
    """
    try:
        check_accuracy_level(level)
    except ValueError as e:
        raise ExportError(str(e)) from None
    model = read_model(src, external_data=not foreign)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(attrs + [onnx.helper.make_attribute("accuracy_level", level)])
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            meta = json.loads(prop.value)
            meta["accuracy_level"] = level
            prop.value = json.dumps(meta, sort_keys=True)
    dst = check_destination(dst)
    if not foreign:
        write_model(model, dst)
        return dst
    missing = sorted(
        {
            e.value
            for t in model.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data
            if e.key == "location" and not (dst.parent / e.value).is_file()
        }
    )
    if missing:
        raise ExportError(
            f"foreign=True leaves the weights where they are, but {str(dst.parent)!r} lacks the "
            f"data file(s) {missing} the graph reads: write {str(dst)!r} beside them"
        )
    with staged_file(dst) as tmp:
        tmp.write_bytes(model.SerializeToString())
        commit(tmp, dst)
    return dst
