"""``load(path)``: an onnxruntime session that takes and returns numpy arrays or torch tensors.

- Inputs by position (the graph's input order) or by name; torch tensors are moved to CPU
  numpy, and then outputs come back as torch tensors too (numpy otherwise).
- Providers: CUDA first when onnxruntime-gpu sees a GPU, else CPU; or what you pass.
- Numerics: onnxruntime fuses standard ``DequantizeLinear + MatMul`` into MatMulNBits and
  then silently computes at accuracy level 4 (int8 activations). The session pins the
  level the model was exported with (``session.qdq_matmulnbits_accuracy_level``), or the
  ``accuracy_level`` you pass.
- A session serves concurrent ``__call__``s from several threads (onnxruntime's ``run``
  is thread-safe).
- The file is parsed and checked first (``onnx_file.read_model``): a missing, corrupt or
  truncated file, or external data outside the model's directory, is a ``ModelFileError``
  before onnxruntime reads anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..errors import ModelFileError
from ..onnx.file import read_metadata
from ..quant.formats import check_accuracy_level
from .providers import default_providers


class Session:
    def __init__(
        self,
        path: str | os.PathLike,
        providers: list[str] | None = None,
        accuracy_level: int | None = None,
        threads: int | None = None,
    ):
        path = Path(path)
        if accuracy_level is not None:
            check_accuracy_level(accuracy_level)
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 0
        ):
            raise ValueError(
                f"threads must be an integer >= 0 (0: onnxruntime's default), got {threads!r}"
            )
        self.metadata = read_metadata(path)
        level = (
            accuracy_level if accuracy_level is not None else self.metadata.get("accuracy_level", 0)
        )
        options = ort.SessionOptions()
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(int(level)))
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=providers or default_providers()
            )
        except Exception as e:
            raise ModelFileError(f"onnxruntime cannot load {str(path)!r}: {e}") from e
        self.accuracy_level = int(level)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_specs = {i.name: (i.type, i.shape) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, *args, **kwargs):
        """Run once; returns the output, or a tuple of outputs when the graph has several."""
        if len(args) > len(self.input_names):
            raise ValueError(
                f"the model takes {len(self.input_names)} inputs {self.input_names}, got "
                f"{len(args)}"
            )
        feeds = dict(zip(self.input_names, args))
        for name, value in kwargs.items():
            if name not in self.input_names:
                raise ValueError(
                    f"the model has no input {name!r}; its inputs are {self.input_names}"
                )
            if name in feeds:
                raise ValueError(f"input {name!r} given by position and by name")
            feeds[name] = value
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"missing input(s) {missing}; the model takes {self.input_names}")
        as_torch = any(isinstance(v, torch.Tensor) for v in feeds.values())
        arrays = {
            k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            for k, v in feeds.items()
        }
        for name, array in arrays.items():
            self._check_input(name, array)
        outputs = self.session.run(None, arrays)
        if as_torch:
            outputs = [torch.from_numpy(o) for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _check_input(self, name: str, array: np.ndarray) -> None:
        """dtype, rank and fixed dims as the graph declares them: a clear error instead of
        onnxruntime's."""
        kind, shape = self.input_specs[name]
        want = _DTYPES.get(kind)
        if want is not None and array.dtype != want:
            raise ValueError(
                f"input {name!r} must be {np.dtype(want).name}, got {array.dtype.name}"
            )
        if shape is not None and len(shape) != array.ndim:
            raise ValueError(
                f"input {name!r} must have {len(shape)} dims {shape}, got shape {list(array.shape)}"
            )
        for axis, (dim, got) in enumerate(zip(shape or [], array.shape)):
            if isinstance(dim, int) and dim != got:
                raise ValueError(
                    f"input {name!r} must have size {dim} on axis {axis} {shape}, got shape "
                    f"{list(array.shape)}"
                )


_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}
