"""Read ONNX files safely: every reader in the package parses a file through ``read_model``.

``read_model(path)`` parses the graph (not the external weights) and raises a
``ModelFileError`` naming the file when it

- is missing, unreadable or empty, or does not parse (truncated, corrupt, not ONNX);
- keeps a tensor's bytes outside the model's own directory: an absolute ``location``,
  a relative one whose ``..`` climbs out, or a symbolic link leading out. A file from
  elsewhere must not make us, or onnxruntime after us, read arbitrary files.

Only then, with ``external_data=True``, are the weights read from beside the file.

``adapter_tensors(model)`` names what an integer-zero adapter may replace in a file: each
MatMulNBits' uint8 zero points (and scales), read from the graph alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import onnx

from ..errors import ModelFileError
from ..quant.formats import METADATA_KEY
from .matmulnbits import DOMAIN


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph stores: initializers, node attributes, subgraphs (If, Loop, Scan)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def check_external_data(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Raise unless every external-data location resolves inside the directory of ``path``."""
    root = Path(path).resolve().parent
    for t in _tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (
            root / location
        ).resolve()  # an absolute location replaces root; symlinks are followed
        if not location or Path(location).is_absolute() or not target.is_relative_to(root):
            raise ModelFileError(
                f"{str(path)!r}: tensor {t.name!r} keeps its data at {location!r}, outside the "
                "model's "
                "directory; refusing to read it. External data must be a relative path that stays "
                "in "
                f"the directory of the .onnx file"
            )


def read_model(path: str | os.PathLike, *, external_data: bool = False) -> onnx.ModelProto:
    """The parsed model at ``path``, checked as the module docstring says."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no ONNX file at {str(path)!r}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except OSError as e:
        raise ModelFileError(f"cannot read {str(path)!r}: {e.strerror or e}") from e
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelFileError(
            f"{str(path)!r} is not a readable ONNX model (truncated or corrupt?): {e}"
        ) from e
    if not model.graph.node and not model.graph.output:
        raise ModelFileError(f"{str(path)!r} holds no ONNX graph (an empty or foreign file?)")
    check_external_data(model, path)
    if external_data:
        try:
            onnx.load_external_data_for_model(model, str(path.resolve().parent))
        except Exception as e:
            raise ModelFileError(f"cannot read the external data of {str(path)!r}: {e}") from e
    return model


def read_metadata(path: str | os.PathLike) -> dict:
    """The exporter's record (``formats.METADATA_KEY`` in ``metadata_props``, JSON), or ``{}``."""
    model = read_model(path)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return {}


ZEROS, SCALES = 3, 2  # MatMulNBits' input positions


def adapter_tensors(model: onnx.ModelProto, scales: bool = False) -> list[str]:
    """The initializers an integer-zero adapter may change: each MatMulNBits' uint8 zero points
    (and float scales with ``scales``), in node order."""
    inits = {i.name: i for i in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or node.domain != DOMAIN or len(node.input) <= ZEROS:
            continue
        zeros = inits.get(node.input[ZEROS])
        if zeros is None or zeros.data_type != onnx.TensorProto.UINT8:
            continue  # float zero points or none: no integer-zero adapter applies
        wanted = [node.input[ZEROS]] + ([node.input[SCALES]] if scales else [])
        names += [n for n in wanted if n in inits and n not in names]
    return names
