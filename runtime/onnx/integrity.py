"""The digest of an ONNX file's weights, recorded in its metadata when it is written.

A file cannot hold the hash of its own bytes, so ``weights_digest`` hashes what it stores: every
tensor (initializers, node attributes, subgraphs; in graph order), each as its name, element type,
shape and bytes. The exporter's metadata (``formats.METADATA_KEY``) records it as
``weights_sha256`` (``stamp``, called as the file is written); ``verify_file`` reads the file (and
its external data) again and refuses one whose weights changed, naming the file. A changed graph
or metadata that leaves the weights alone is not caught: the graph is checked by onnxruntime as it
loads, the weights are not.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

import onnx

from ..errors import ModelFileError
from ..quant.formats import METADATA_KEY
from .file import _tensors, read_model

DIGEST = "weights_sha256"


def weights_digest(model: onnx.ModelProto) -> str:
    h = hashlib.sha256()
    for t in _tensors(model.graph):
        h.update(
            t.name.encode() + b"\0" + struct.pack(f"<{1 + len(t.dims)}q", t.data_type, *t.dims)
        )
        if t.HasField("raw_data"):
            h.update(t.raw_data)
        else:  # small tensors with typed fields
            typed = onnx.TensorProto()
            typed.CopyFrom(t)
            typed.name = ""
            h.update(typed.SerializeToString(deterministic=True))
    return h.hexdigest()


def _record(model: onnx.ModelProto) -> onnx.StringStringEntryProto | None:
    return next((p for p in model.metadata_props if p.key == METADATA_KEY), None)


def stamp(model: onnx.ModelProto) -> str:
    """Record the weights' digest in the metadata (created if absent); returns it."""
    digest = weights_digest(model)
    prop = _record(model)
    if prop is None:
        prop = model.metadata_props.add(key=METADATA_KEY, value="{}")
    prop.value = json.dumps({**json.loads(prop.value), DIGEST: digest}, sort_keys=True)
    return digest


def verify_file(path: str | os.PathLike) -> str:
    """Recompute the weights' digest of the file at ``path`` and compare it with the recorded
    one; returns it, or raises ``ModelFileError`` naming the file."""
    model = read_model(path, external_data=True)
    prop = _record(model)
    want = json.loads(prop.value).get(DIGEST) if prop is not None else None
    if want is None:
        raise ModelFileError(
            f"{str(path)!r} records no weights digest (not written by lowrank-compiler, or by an "
            "older version): export it again, or load it with verify=False"
        )
    got = weights_digest(model)
    if got != want:
        raise ModelFileError(
            f"{str(path)!r}: its weights changed since it was written (sha256 {got[:16]}... where "
            f"its metadata records {want[:16]}...); export it again or restore the file"
        )
    return got
