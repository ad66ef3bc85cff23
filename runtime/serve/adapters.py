"""Adapters over one base in a ``DecoderSession``: ``.onnx_adapter`` files (``export_adapter``),
checked against the session's graph, then applied per run in one of two ways.

- **feeds** (a base written with ``adapter_inputs``, accuracy level 0): the adapter's tensors
  override graph inputs of the same name, as onnxruntime's ``RunOptions`` adapters and
  onnxruntime-genai's ``set_active_adapter`` do; one session serves every adapter, each costs
  its own bytes (its zero points) in memory.
- **session** (any base whose MatMulNBits' zero points / scales are constants, accuracy level 4
  included): each adapter gets its own session of the base file, its tensors given as
  initializers (``SessionOptions.add_initializer``), so onnxruntime prepacks them with the codes
  as it does the base's and decodes at the base's speed. onnxruntime's x64 level-4 kernel ignores
  zero points and scales that are not constants, which is why the feeds route stops at level 0;
  the price here is memory: each adapter holds its own prepacked weights, about the INT4 file.

Each tensor must match the base's (element type and shape), as an overridable input (feeds) or
as a MatMulNBits zero point / scale initializer (session); the adapter's record
(``<file>.json``) must name the base's weights digest, or, without a record, the file's model
version must be the digest's first hex digits (``model_version``, as ``export_adapter`` writes
it). A file that fails either is refused as it loads, naming the tensor or the digests, never at
a later run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ..errors import AdapterError
from ..onnx.file import adapter_tensors
from ..quant.formats import FOLDER_RECORD, METADATA_KEY, adapter_record_path

ROUTES = ("auto", "feeds", "session")
VERSION_DIGITS = 7  # an adapter file's model version: the base's digest's first hex digits
_NP = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16}


def swappable(folder: Path) -> bool:
    """Whether ``folder``'s record says its zero points are overridable inputs."""
    try:
        record = json.loads((folder / FOLDER_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return record.get("adapter_inputs", "none") != "none"


def base_digest(session: ort.InferenceSession) -> str | None:
    """The weights digest the session's file records (``export_genai`` writes one)."""
    meta = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return json.loads(meta).get("weights_sha256") if meta else None


def constant_tensors(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, list[int]]]:
    """Each MatMulNBits' integer zero points and scales an adapter may replace (the session
    route): name -> (dtype, shape). ``model`` may be read without its external data."""
    inits = {t.name: t for t in model.graph.initializer}
    return {
        n: (np.dtype(helper.tensor_dtype_to_np_dtype(inits[n].data_type)), list(inits[n].dims))
        for n in adapter_tensors(model, scales=True)
    }


def read_adapter(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise AdapterError(f"adapter {str(path)!r} does not exist")
    try:
        params = ort.AdapterFormat.read_adapter(str(path)).get_parameters()
    except Exception as e:
        raise AdapterError(f"{str(path)!r} is not an onnxruntime adapter file: {e}") from None
    return {n: v.numpy().copy() for n, v in params.items()}  # owned: the file reader goes


def adapter_route(
    path: Path,
    params: dict[str, np.ndarray],
    session: ort.InferenceSession,
    constants: dict[str, tuple[np.dtype, list[int]]],
    route: str = "auto",
) -> str:
    """``"feeds"`` or ``"session"`` for the adapter ``params`` (module docstring): ``auto`` takes
    feeds when every tensor is an overridable input, else the session route. Refuses a tensor
    the base has not, or of another type or shape, and a record naming another base."""
    if route not in ROUTES:
        raise AdapterError(f"route must be one of {ROUTES}, got {route!r}")
    inputs = {
        i.name: (np.dtype(_NP[i.type]) if i.type in _NP else i.type, list(i.shape))
        for i in session.get_overridable_initializers()
    }
    if route == "auto":
        route = "feeds" if inputs and set(params) <= set(inputs) else "session"
    want = inputs if route == "feeds" else constants
    for name, array in params.items():
        if name not in want:
            what = "an overridable input" if route == "feeds" else "a MatMulNBits zero point/scale"
            raise AdapterError(
                f"adapter {str(path)!r}: its tensor {name!r} is not {what} of the base graph "
                "(an adapter for another base, or for another export of it)"
            )
        dtype, shape = want[name]
        if array.dtype != dtype:
            raise AdapterError(
                f"adapter {str(path)!r}: {name!r} is {array.dtype}, the base takes {dtype}"
            )
        if list(array.shape) != shape:
            raise AdapterError(
                f"adapter {str(path)!r}: {name!r} has shape {list(array.shape)}, the base's is "
                f"{shape}"
            )
    _check_record(path, session)
    return route


def model_version(digest: str) -> int:
    """The adapter file's model version for a base of weights digest ``digest``: its first
    ``VERSION_DIGITS`` hex digits (as far as the format's int holds)."""
    return int(digest[:VERSION_DIGITS], 16)


def _check_record(path: Path, session: ort.InferenceSession) -> None:
    """The record's digest, or without a record the file's model version, must be the base's."""
    record = adapter_record_path(path)
    have = base_digest(session)
    if not record.is_file():
        _check_version(path, have)
        return
    try:
        want = json.loads(record.read_text(encoding="utf-8")).get("base_weights_sha256")
    except (OSError, ValueError) as e:
        raise AdapterError(f"cannot read the adapter's record {str(record)!r}: {e}") from None
    if want and have and want != have:
        raise AdapterError(
            f"adapter {str(path)!r} belongs to another base: its record names weights "
            f"{want[:16]}..., this base's are {have[:16]}...; export it over this base "
            "(export_adapter) or load its own base"
        )


def _check_version(path: Path, have: str | None) -> None:
    if have is None:
        return
    version = ort.AdapterFormat.read_adapter(str(path)).get_model_version()
    if version != model_version(have):
        raise AdapterError(
            f"adapter {str(path)!r} has no record ({adapter_record_path(path).name} is missing) "
            f"and its model version {version:#x} is not this base's ({model_version(have):#x}, "
            f"the first {VERSION_DIGITS} hex digits of its weights digest {have[:16]}...): it "
            "belongs to another base; put its record back beside it, export it over this base "
            "(export_adapter) or load its own base"
        )


@dataclass
class Loaded:
    """One loaded adapter: its tensors as feeds, or its own session (``route``)."""

    route: str
    feeds: dict[str, np.ndarray] = field(default_factory=dict)
    session: ort.InferenceSession | None = None
    values: dict[str, ort.OrtValue] = field(default_factory=dict)  # alive as long as session


class AdapterSlots:
    """Adapters loaded by name into a session. Subclasses set ``self.session``,
    ``self._loaded = {}`` and ``self._constants`` (``constant_tensors`` of the graph), and give
    ``_new_session(options_hook)``: another session of the same file and options, after
    ``options_hook(options)``."""

    session: ort.InferenceSession
    _loaded: dict[str, Loaded]
    _constants: dict[str, tuple[np.dtype, list[int]]]
    _new_session: Callable[[Callable[[ort.SessionOptions], None]], ort.InferenceSession]

    def load_adapter(
        self, path: str | os.PathLike, name: str | None = None, *, route: str = "auto"
    ) -> str:
        """Check and load the adapter file ``path`` under ``name`` (default: the file's stem);
        returns the name ``generate(adapter=...)`` takes. route: ``"feeds"``, ``"session"`` or
        ``"auto"`` (feeds where the base's zero points are inputs; module docstring)."""
        path = Path(path)
        params = read_adapter(path)
        route = adapter_route(path, params, self.session, self._constants, route)
        name = path.stem if name is None else name
        if route == "feeds":
            self._loaded[name] = Loaded(route, feeds=params)
            return name
        values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in params.items()}

        def give(options: ort.SessionOptions) -> None:
            for n, v in values.items():
                options.add_initializer(n, v)

        self._loaded[name] = Loaded(route, session=self._new_session(give), values=values)
        return name

    def unload_adapter(self, name: str) -> None:
        self._adapter(name)
        del self._loaded[name]

    @property
    def adapters(self) -> list[str]:
        return sorted(self._loaded)

    def _adapter(self, name: str) -> Loaded:
        if name not in self._loaded:
            raise AdapterError(
                f"no adapter named {name!r} is loaded; loaded: {sorted(self._loaded) or 'none'} "
                "(load_adapter(path, name) first)"
            )
        return self._loaded[name]

    def adapter_run(self, name: str | None) -> tuple[ort.InferenceSession, dict]:
        """The session that runs with adapter ``name`` applied, and the extra feeds it needs
        (the base's session and {} for ``None``)."""
        if name is None:
            return self.session, {}
        loaded = self._adapter(name)
        if loaded.route == "feeds":
            return self.session, loaded.feeds
        return loaded.session, {}
