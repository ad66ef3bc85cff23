"""The format's vocabulary, defined once: bit widths, group sizes, zero-point forms,
quantizers, accuracy levels, the ONNX metadata key, and the split correction's formula.

Everything else imports these names; each option is validated here, by the function that
goes with it, so a policy, a pass, a layer and the exporter reject the same values with
the same words.

Split correction (a real-valued zero point ``z'`` stored as the integer ``zr`` plus an
exact correction beside the integer kernel)::

    W x = sum_l scale[j, l] (q - z')[j, l-th group] . x      (per output j)
        = int_kernel(x; zr) + sum_l scale[j, l] (zr - z')[j, l] * group_sum(x)[l]
    D[j, l] = scale[j, l] (zr[j, l] - z'[j, l]),   D: [N, L]   stored as D^T: [L, N]

LR-QAT's frozen grid positions (``quant.grid``) are unsigned fixed point: a ``bits``-wide
integer part and ``grid_fraction_bits(bits)`` fraction bits in one uint8 (bits <= 4: 1 byte a
weight) or, for 8-bit codes, an int16 (7 fraction bits).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import PolicyError

BITS = (2, 3, 4, 8)  # what the layers compute
KERNEL_BITS = (2, 4, 8)  # what onnxruntime's MatMulNBits runs (no 3-bit kernel)
MIN_GROUP = 16  # MatMulNBits' smallest block
QUANTIZERS = ("rtn", "gptq")  # how a float base is rounded
ZERO_POINT_MODES = ("float", "int")  # QA-LoRA's training form
FOLD_ZEROS = ("split", "float", "round")  # how a folded real-valued zero point is stored
EXPORT_FORMATS = ("matmulnbits", "qdq")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits compute precision: 0 fp32 ... 4 int8 activations
METADATA_KEY = "lowrank_compiler"  # the exported file's metadata_props entry (JSON)
FOLDER_RECORD = "lowrank_compiler.json"  # a decoder folder's record: who wrote it, file digests
ADAPTER_INPUTS = ("none", "zeros", "zeros+scales")  # export_genai: what adapters may override
ADAPTER_RECORD = ".json"  # an adapter file's record (base digest, policy): <file>.json beside it


def adapter_record_path(path) -> Path:
    """The record beside the adapter file ``path``."""
    path = Path(path)
    return path.with_name(path.name + ADAPTER_RECORD)


EMBEDDINGS = (
    "float",
    "int4",
)  # how an export stores vocabulary tables (int4: GatherBlockQuantized)
EMBEDDING_BITS = 4  # GatherBlockQuantized's width everywhere onnxruntime runs it
QDQ_BITS = (4, 8)  # widths standard ONNX's DequantizeLinear holds (UINT4, UINT8)
EXPORT_NODES = {"matmulnbits": "MatMulNBits", "qdq": "DequantizeLinear+MatMul"}  # by export format
ADAPTER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QDQ_TABLE = (
    "an INT4 table needs com.microsoft::GatherBlockQuantized (standard ONNX cannot gather 4-bit "
    "rows); use format='matmulnbits', or leave tables float"
)


def grid_storage(bits: int) -> tuple[torch.dtype, int]:
    """(dtype, fraction bits) of the fixed-point grid positions for ``bits``-wide codes: the
    integer part fills the word, the fraction takes the rest (uint8 for bits <= 4, else int16)."""
    return (torch.uint8, 8 - bits) if bits <= 4 else (torch.int16, 15 - bits)


def qmax(bits: int) -> int:
    """The largest code of a ``bits``-wide unsigned integer."""
    return (1 << bits) - 1


def check_bits(value, field: str = "bits") -> int:
    if type(value) is not int or value not in BITS:
        raise PolicyError(f"{field} must be one of {BITS}, got {value!r}")
    return value


def group_size_problem(value) -> str | None:
    """Why ``value`` is not a group size (a power of two >= 16), or None."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < MIN_GROUP
        or value & (value - 1)
    ):
        return f"must be a power of two >= {MIN_GROUP} (16, 32, 64, 128, ...), got {value!r}"
    return None


def check_group_size(value, field: str = "group_size") -> int:
    problem = group_size_problem(value)
    if problem:
        raise PolicyError(f"{field} {problem}")
    return value


def check_choice(value, choices: tuple, field: str):
    if not isinstance(value, str) or value not in choices:
        raise PolicyError(f"{field} must be one of {choices}, got {value!r}")
    return value


def adapter_dtype(value, field: str = "adapter_dtype") -> torch.dtype:
    """The dtype adapters train in, by name (``"float32"``, ``"bfloat16"``, ``"float16"``)."""
    if not isinstance(value, str) or value not in ADAPTER_DTYPES:
        raise PolicyError(f"{field} must be one of {tuple(ADAPTER_DTYPES)}, got {value!r}")
    return ADAPTER_DTYPES[value]


def check_flag(value, field: str) -> bool:
    """A true/false option (``train_scales``, ``double_quant``)."""
    if not isinstance(value, bool):
        raise PolicyError(f"{field} must be true or false, got {value!r}")
    return value


def check_dropout(value, field: str = "dropout") -> float:
    """Dropout on an adapter's input: a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise PolicyError(f"{field} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_int(value, field: str, low: int, high: int | None = None) -> int:
    """An integer in ``[low, high]`` (``rank``: ``low`` 1, no ``high``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise PolicyError(f"{field} must be an integer {span}, got {value!r}")
    return value


def check_positive(value, field: str) -> float:
    """A positive finite number (``alpha``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise PolicyError(f"{field} must be a positive finite number, got {value!r}")
    return float(value)


def check_accuracy_level(level) -> int:
    """MatMulNBits' compute precision: 0 (fp32) to 4 (int8 activations)."""
    if isinstance(level, bool) or not isinstance(level, int) or level not in ACCURACY_LEVELS:
        raise ValueError(
            "accuracy_level must be 0 (fp32 compute), 1, 2, 3 or 4 (int8 activations), got "
            f"{level!r}"
        )
    return level


def export_bits_problem(bits: int, fmt: str) -> str | None:
    """Why ``bits``-wide integer weights have no ONNX form in ``fmt``, or None."""
    if bits not in KERNEL_BITS:
        return f"{bits}-bit weights have no onnxruntime kernel; quantize with bits 2, 4 or 8"
    if fmt == "qdq" and bits not in QDQ_BITS:
        return f"{bits}-bit weights have no standard ONNX form; use format='matmulnbits'"
    return None


def takes_float_zeros(fmt: str, bits: int) -> bool:
    """Whether an export format keeps real-valued zero points as they are: standard ONNX has
    none, and onnxruntime's CPU MatMulNBits refuses them at 8 bits. Elsewhere a float-zero
    layer is exported in the exact split form (the ONNX pass ``split-form``)."""
    return fmt == "matmulnbits" and bits != 8


def split_correction(
    scales: torch.Tensor, rounded: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """``D^T``, float32 ``[L, N]``: what ``group_sum(x) @ D^T`` adds to the integer kernel run
    with zero points ``rounded`` so that it computes zero points ``real`` exactly (module
    docstring). Computed in float64; every argument is ``[N, L]``."""
    return (
        (scales.double() * (rounded.double() - real.double())).T.to(torch.float32).contiguous()
    )  # (L, N)
