"""What every section shares: the machine's label, progress lines, interleaved timing,
memory bandwidth, and the bytes a linear layer's weights occupy.

Timing rule: the sides of a comparison run in one process, alternately (one run of
each, then the next round), so a slow moment of the machine hits all of them alike;
each reports the median of its runs.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from lowrank_compiler.runtime.layers.protocol import AdapterLayer, is_quantized_linear

START = time.perf_counter()


class Log:
    """Progress lines on stderr, each stamped with the time since the suite started."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            s = int(time.perf_counter() - START)
            print(f"[{s // 60:2d}:{s % 60:02d}] {msg}", file=sys.stderr, flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "sha_ni",  # what sha256 (file verification) runs at
)


def cpu_flags() -> str:
    """The CPU's vector and int8 dot-product flags, the ones INT4 kernels pick their code by, and
    its SHA extension."""
    try:
        line = next(
            (x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")), ""
        )
    except OSError:
        return "unknown"
    have = set(line.split(":", 1)[-1].split())
    return " ".join(f for f in FLAGS if f in have) or f"none of {', '.join(FLAGS)}"


def _read(path: str, default: str = "?") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _mem_total_gib() -> float | None:
    for line in _read("/proc/meminfo", "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return None


def machine() -> dict:
    """The label every absolute number carries."""
    import onnx
    import onnxruntime as ort

    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "l3_cache": _read("/sys/devices/system/cpu/cpu0/cache/index3/size"),
        "memory_gib": _mem_total_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def machine_line(m: dict) -> str:
    flags = f" (flags: {m['cpu_flags']})" if m.get("cpu_flags") else ""  # absent from older results
    return (
        f"{m['cpu']}{flags}, {m['cores']} cores, L3 {m['l3_cache']}, {m['memory_gib']:.0f} GiB; "
        f"{m['platform']}; "
        f"Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}, onnx "
        f"{m['onnx']}"
    )


def interleaved(
    runners: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per runner; every round runs each runner once, in turn."""
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for k, fn in runners.items():
            t = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


class Bandwidth:
    """Read bandwidth of main memory, measured on a buffer far larger than the caches.

    Each pass reduces the whole buffer (``threads`` threads, one slice each; numpy lets
    go of the GIL inside a reduction) with two kernels that do almost no arithmetic per
    byte: a float32 sum and a bitwise OR over 64-bit words. The faster kernel's time
    gives the bandwidth: the higher figure is the stricter floor.
    """

    def __init__(self, nbytes: int = 1 << 30):
        self.buf = np.ones(
            nbytes // 4, dtype=np.float32
        )  # (n,): written once so every page is resident

    def measure(self, threads: int = 1) -> float:
        """Bytes per second, one pass per kernel."""
        parts = np.array_split(self.buf, threads)
        kernels = (np.sum, lambda a: np.bitwise_or.reduce(a[: a.size // 2 * 2].view(np.uint64)))
        best = 0.0
        with ThreadPoolExecutor(
            threads
        ) as pool:  # started before the clock: only the passes are timed
            list(pool.map(len, parts))
            for kernel in kernels:
                t = time.perf_counter()
                list(pool.map(kernel, parts)) if threads > 1 else kernel(parts[0])
                best = max(best, self.buf.nbytes / (time.perf_counter() - t))
        return best


def base_linear_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes, weights) of the targeted layers' frozen weights, measured as allocated.

    A targeted layer is an adapter layer's base or a quantized layer (a fold's output):
    an fp32 matrix, or codes + scales + zero points (+ correction), or NF4 codes + block
    scales, or LR-QAT's fixed-point grid + scales + zero points. Biases are left out; ``weights``
    counts the matrix entries they stand for.
    """
    bases = {}
    for m in model.modules():
        if isinstance(m, AdapterLayer):
            bases[id(m.base)] = m.base
        elif is_quantized_linear(m):
            bases[id(m)] = m
    nbytes = weights = 0
    for base in bases.values():
        if is_quantized_linear(base):
            nbytes += sum(
                b.untyped_storage().nbytes() for n, b in base.named_buffers() if n != "bias"
            )
            weights += base.in_features * base.out_features
        else:  # a float layer (nn.Linear, GPT-2 Conv1D)
            nbytes += base.weight.untyped_storage().nbytes()
            weights += base.weight.numel()
    return nbytes, weights


def check_settings(where: str, **fields) -> None:
    """Every value a positive integer (tuples: each item; tuples of pairs: each number)."""
    for name, value in fields.items():
        items = value if isinstance(value, tuple) else (value,)
        flat = [x for item in items for x in (item if isinstance(item, tuple) else (item,))]
        if not flat or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in flat):
            raise ValueError(
                f"{where}.{name} must be a positive integer (or a non-empty tuple of them), got "
                f"{value!r}"
            )


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms >= 10 else f"{ms:.2f} ms"


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"
