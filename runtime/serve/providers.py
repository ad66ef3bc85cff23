"""Which onnxruntime execution providers a session asks for by default."""

from __future__ import annotations

import onnxruntime as ort
import torch


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu is installed and torch sees a GPU, else the CPU."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
