"""Adapters over one base in a ``DecoderSession``: ``.onnx_adapter`` files (``export_adapter``),
checked against the session's graph, then applied per run through onnxruntime's ``RunOptions``.

An adapter's tensors override graph inputs of the same name (onnxruntime appends them to the
feeds), so each must be an input of the base with the same element type and shape; its record
(``<file>.json``, when present) must name the base's weights digest. A file that fails either is
refused as it loads, naming the tensor or the digests, never at a later run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnxruntime as ort

from ..errors import AdapterError
from ..quant.formats import FOLDER_RECORD, METADATA_KEY, adapter_record_path


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


def check_adapter(path: Path, session: ort.InferenceSession) -> dict:
    """Refuse ``path`` unless its tensors are inputs of ``session`` with the same type and shape,
    and its record (if any) names the session's base."""
    if not path.is_file():
        raise AdapterError(f"adapter {str(path)!r} does not exist")
    try:
        params = ort.AdapterFormat.read_adapter(str(path)).get_parameters()
    except Exception as e:
        raise AdapterError(f"{str(path)!r} is not an onnxruntime adapter file: {e}") from None
    inputs = {i.name: i for i in session.get_overridable_initializers()}
    for name, value in params.items():
        want = inputs.get(name)
        if want is None:
            raise AdapterError(
                f"adapter {str(path)!r}: its tensor {name!r} is not an overridable input of the "
                "base graph (an adapter for another base, or a base written without adapter_inputs)"
            )
        shape = list(value.shape())
        if value.data_type() != want.type:
            raise AdapterError(
                f"adapter {str(path)!r}: {name!r} is {value.data_type()}, the base takes "
                f"{want.type}"
            )
        if shape != list(want.shape):
            raise AdapterError(
                f"adapter {str(path)!r}: {name!r} has shape {shape}, the base's is {want.shape}"
            )
    _check_record(path, session)
    return params


def _check_record(path: Path, session: ort.InferenceSession) -> None:
    record = adapter_record_path(path)
    if not record.is_file():
        return
    try:
        want = json.loads(record.read_text(encoding="utf-8")).get("base_weights_sha256")
    except (OSError, ValueError) as e:
        raise AdapterError(f"cannot read the adapter's record {str(record)!r}: {e}") from None
    have = base_digest(session)
    if want and have and want != have:
        raise AdapterError(
            f"adapter {str(path)!r} belongs to another base: its record names weights "
            f"{want[:16]}..., this base's are {have[:16]}...; export it over this base "
            "(export_adapter) or load its own base"
        )


class AdapterSlots:
    """Adapters loaded by name into a session (``self.session``; subclasses set ``self._loaded =
    {}``, name -> tensors); ``adapter_feeds(name)`` gives the tensors that apply one, as extra
    feeds (onnxruntime's ``RunOptions`` adapters do the same, but not on the IO-binding path a
    shared KV buffer takes), or {} for the base alone."""

    def load_adapter(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Check and load the adapter file ``path`` under ``name`` (default: the file's stem);
        returns the name ``generate(adapter=...)`` takes."""
        path = Path(path)
        params = check_adapter(path, self.session)
        name = path.stem if name is None else name
        arrays = {n: v.numpy().copy() for n, v in params.items()}  # owned: the file reader goes
        self._loaded[name] = arrays
        return name

    def unload_adapter(self, name: str) -> None:
        self.adapter_feeds(name)
        del self._loaded[name]

    @property
    def adapters(self) -> list[str]:
        return sorted(self._loaded)

    def adapter_feeds(self, name: str | None) -> dict:
        if name is None:
            return {}
        if name not in self._loaded:
            raise AdapterError(
                f"no adapter named {name!r} is loaded; loaded: {sorted(self._loaded) or 'none'} "
                "(load_adapter(path, name) first)"
            )
        return self._loaded[name]
