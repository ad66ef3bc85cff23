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

LR-QAT's frozen grid positions (``runtime.grid``) are unsigned fixed point: a ``bits``-wide
integer part and ``grid_fraction_bits(bits)`` fraction bits in one uint8 (bits <= 4: 1 byte a
weight) or, for 8-bit codes, an int16 (7 fraction bits).
"""

from __future__ import annotations

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
EMBEDDINGS = (
    "float",
    "int4",
)  # how an export stores vocabulary tables (int4: GatherBlockQuantized)
EMBEDDING_BITS = 4  # GatherBlockQuantized's width everywhere onnxruntime runs it


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


def check_accuracy_level(level) -> int:
    """MatMulNBits' compute precision: 0 (fp32) to 4 (int8 activations)."""
    if isinstance(level, bool) or not isinstance(level, int) or level not in ACCURACY_LEVELS:
        raise ValueError(
            "accuracy_level must be 0 (fp32 compute), 1, 2, 3 or 4 (int8 activations), got "
            f"{level!r}"
        )
    return level


def split_correction(
    scales: torch.Tensor, rounded: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """``D^T``, float32 ``[L, N]``: what ``group_sum(x) @ D^T`` adds to the integer kernel run
    with zero points ``rounded`` so that it computes zero points ``real`` exactly (module
    docstring). Computed in float64; every argument is ``[N, L]``."""
    return (
        (scales.double() * (rounded.double() - real.double())).T.to(torch.float32).contiguous()
    )  # (L, N)
