"""QA-LoRA (Xu et al. 2023): group-pooled adapters over a group-quantized base, foldable exactly.

Base ``IntLinear`` with ``W[j, i] = scale[j, l] (q[j, i] - zero[j, l])``, group size ``g``,
``L = ceil(K / g)`` groups of widths ``w_l`` (``g``, but ``K - (L - 1) g`` for a partial last
group). The adapter sees the input averaged over each group, a group over its own width::

    pool(x)[l] = sum(x[group l]) / w_l              (..., K) -> (..., L)
    y = W x + b + s B A dropout(pool(x)),   A: [r, L] random,  B: [N, r] zero,  s = alpha / r

Its effective weight is constant inside a group, ``c[j, l] = s (B A)[j, l] / w_l``, so it
folds into the zero point:  ``zero'[j, l] = zero[j, l] - c[j, l] / scale[j, l]``; the
codes never change. A partial group folds as exactly as a whole one: its ``w_l`` weights share
one zero point and its pooling divides by ``w_l``, so ``c / scale`` moves every weight it
pools. ``zero'`` is real-valued. Deployment forms (``fold_zeros``):

- ``"float"``: real zero points (MatMulNBits accepts them; exact, but a slower kernel);
- ``"split"``: ``zr = clamp(round(zero'), 0, 2^b - 1)`` packed as integers, plus the exact
  correction ``y += group_sum(x) @ D^T`` with ``D = scale (zr - zero')``, ``D: [N, L]``
  (stored as ``D^T``; left out where it is exactly zero, e.g. an untrained adapter);
- ``"round"``: ``zr`` alone: lossy by up to scale/2 per weight, there to show the loss.

Training mode ``zero_point="int"`` puts the rounding inside the forward pass
(straight-through estimator, clamped to the code range)::

    zero'' = clamp(round_ste(zero - c / scale), 0, 2^b - 1)
    y = W x + b + (dropout(pool(x)) w) @ (scale (zero - zero''))^T       (w: each group's width)

so the fold is integer by construction: ``zeros = zero''`` and nothing else.

``train_scales=True`` also trains each group's scale as ``scale = scale0 exp(scale_gain)``
(``scale_gain`` [N, L], starting at 0; a log factor so that a learning rate is a relative
step and weight decay pulls toward the quantizer's scale). Everything above then reads the
trained ``scale`` (the base keeps ``scale0``, so saved adapters still name their base), the
base's product runs the ``int_linear`` op with it, and the fold writes it: scales are float
in ``MatMulNBits``, so the fold stays exact in every form.

In a bfloat16 or float16 model the base computes in the model's dtype while ``A`` and ``B``
train in ``adapter_dtype`` (float32 by default): the pooled input is cast into it and the
adapter's output back (``casts``). The fold reads ``A`` and ``B`` in float64 either way.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.formats import ZERO_POINT_MODES, check_choice, qmax, split_correction
from ..quant.group import group_count, group_sum, group_widths, pack_zeros, trained_scales
from . import int_linear_op  # noqa: F401  (registers torch.ops.lowrank_compiler.int_linear)
from .int_linear import IntLinear
from .protocol import AdapterLayer, FoldForm, register_layer


def _round_ste(t: torch.Tensor) -> torch.Tensor:
    """round() forward, identity gradient backward."""
    return t + (torch.round(t) - t).detach()


@register_layer
class QALoRALinear(AdapterLayer):
    kind = "qalora"
    peft_kind = "qalora"

    def __init__(
        self,
        base: IntLinear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        zero_point: str = "float",
        train_scales: bool = False,
        *,
        adapter_dtype: torch.dtype = torch.float32,
        io_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not isinstance(base, IntLinear):
            raise TypeError(f"QA-LoRA needs an IntLinear base, got {type(base).__name__}")
        check_choice(zero_point, ZERO_POINT_MODES, "zero_point")
        self.base = base
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        self.zero_point = zero_point
        self.group_size = base.group_size
        self.in_features, self.out_features = base.in_features, base.out_features
        groups = group_count(self.in_features, self.group_size)
        self.partial = bool(self.in_features % self.group_size)  # a short last group
        dev = base.scales.device
        widths = group_widths(self.in_features, self.group_size, dev) if self.partial else None
        self.register_buffer("group_width", widths, persistent=False)  # (L,); none when all are g
        self.set_io_dtype(io_dtype)
        factory = {"dtype": adapter_dtype, "device": dev}
        self.lora_A = nn.Parameter(torch.empty(self.rank, groups, **factory))  # (r, L)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, **factory))  # (N, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if train_scales and base.correction is not None:
            raise ValueError(
                f"train_scales needs an IntLinear base without a split correction; this base "
                f"[{base.out_features}, {base.in_features}] has one (fold it from its adapter "
                "instead)"
            )
        self.train_scales = bool(train_scales)
        gain = (
            nn.Parameter(torch.zeros(base.scales.shape, device=dev)) if train_scales else None
        )  # (N, L)
        self.register_parameter("scale_gain", gain)

    @classmethod
    def from_int_linear(
        cls,
        base: IntLinear,
        *,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        zero_point: str = "float",
        train_scales: bool = False,
        adapter_dtype: torch.dtype = torch.float32,
        io_dtype: torch.dtype = torch.float32,
    ) -> "QALoRALinear":
        return cls(
            base,
            rank,
            alpha,
            dropout,
            zero_point,
            train_scales,
            adapter_dtype=adapter_dtype,
            io_dtype=io_dtype,
        )

    def current_scales(self) -> torch.Tensor:
        """f32 [N, L]: ``scale0 exp(scale_gain)``, or the base's scales. The fold reads this too."""
        return trained_scales(self.base.scales, self.scale_gain)

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        if self.scale_gain is None:
            return self.base(x)
        base = self.base
        return torch.ops.lowrank_compiler.int_linear(
            x,
            base.qweight,
            self.current_scales(),
            base.zeros,
            base.bias,
            base.bits,
            base.group_size,
            base.in_features,
        )

    def widths(self, dtype=torch.float32) -> torch.Tensor:
        """``[L]``: each group's width (``g``; less for a partial last group)."""
        if self.group_width is None:
            return group_widths(self.in_features, self.group_size, self.lora_A.device).to(dtype)
        return self.group_width.to(dtype)

    def pool(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., L)
        if self.partial:  # each group over its own width
            return group_sum(x, self.group_size, self.in_features) / self.widths(x.dtype)
        return x.unflatten(-1, (x.shape[-1] // self.group_size, self.group_size)).mean(-1)

    def _per_group(self, t: torch.Tensor) -> torch.Tensor:
        """``t s / w_l`` for ``t`` ``[N, L]``: an adapter product over each group's inputs."""
        if self.partial:
            return t * self.scale / self.widths(t.dtype)
        return t * (self.scale / self.group_size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (..., K); nn.Linear's argument name
        x = input
        y = self._base_forward(x)  # (..., N)
        if self.casts:  # adapters in their own dtype (float32 in a bfloat16 model)
            x = x.to(self.lora_A.dtype)
        p = self.dropout(self.pool(x))  # (..., L)
        if self.zero_point == "float":
            delta = F.linear(F.linear(p, self.lora_A), self.lora_B) * self.scale  # (..., N)
        else:
            zero = self.base.zero_points()  # (N, L), integers
            d = self.current_scales() * (zero - self._int_zero_points())  # (N, L): whole steps
            sums = p * (self.widths(p.dtype) if self.partial else self.group_size)  # (..., L)
            delta = F.linear(sums, d.to(x.dtype))  # (..., N)
        return y + (delta.to(y.dtype) if self.casts else delta)

    def _int_zero_points(self) -> torch.Tensor:
        """zero'' of ``zero_point="int"``, f32 [N, L]. The fold calls this very function, so it
        rounds exactly as training did (float64 could round a value near .5 the other way)."""
        zero = self.base.zero_points()  # (N, L)
        c = self._per_group(self.lora_B @ self.lora_A)  # (N, L)
        return torch.clamp(_round_ste(zero - c / self.current_scales()), 0, qmax(self.base.bits))

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        yield self.lora_A
        yield self.lora_B
        if self.scale_gain is not None:
            yield self.scale_gain

    # --- folding -------------------------------------------------------------------
    def group_delta(self) -> torch.Tensor:
        """f64 [N, L]: what the adapter adds, ``y = base(x) + group_sum(x) @ group_delta()^T``
        (no dropout): ``s B A / w_l``, or for ``zero_point="int"`` ``scale (zero - zero'')``. With
        ``train_scales`` ``base(x)`` means the base's codes at the trained scales."""
        with torch.no_grad():
            if self.zero_point == "int":
                scales = self.current_scales().double()
                return scales * (
                    self.base.zero_points().double() - self._int_zero_points().double()
                )
            return self._per_group(self.lora_B.double() @ self.lora_A.double())

    def folded_zero_points(self) -> torch.Tensor:
        """zero' = zero - c / scale, float64 [N, L] (for zero_point="int": the integers training
        used)."""
        if self.zero_point == "int":
            with torch.no_grad():
                return self._int_zero_points().double()
        base = self.base
        zero = base.zero_points().double()
        c = self._per_group(self.lora_B.detach().double() @ self.lora_A.detach().double())
        with torch.no_grad():
            return zero - c / self.current_scales().double()

    def folded_layer(self, form: FoldForm | str | None = None) -> IntLinear:
        """A new ``IntLinear`` computing this layer: new zero points (and correction) over the
        same codes and scales, shared with the base, not copied (frozen buffers, never written
        in place; ``lrc.fold`` works on a copy of the model anyway). ``form.zeros`` stores a
        real-valued zero point (module docstring); ``zero_point="int"`` folds to integers."""
        zeros = FoldForm.of(form).zeros
        base = self.base
        moved = self.folded_zero_points()  # (N, L) float64
        scales = (
            base.scales if self.scale_gain is None else self.current_scales().detach().clone()
        )  # (N, L) f32
        common = dict(
            bits=base.bits,
            group_size=base.group_size,
            bias=None if base.bias is None else base.bias.clone(),
            in_features=base.in_features,
        )
        if self.zero_point == "int" or zeros != "float":
            rounded = torch.clamp(torch.round(moved), 0, qmax(base.bits))
            correction = None
            if zeros == "split" and self.zero_point == "float":
                correction = split_correction(scales, rounded, moved)  # D^T: (L, N)
                correction = (
                    correction if correction.any() else None
                )  # integer zeros already: no node
            packed = pack_zeros(rounded.to(torch.uint8), base.bits)
            return IntLinear(base.qweight, scales, packed, correction=correction, **common)
        return IntLinear(base.qweight, scales, moved.to(torch.float32), **common)

    def fold_error(self, folded: nn.Module, x: torch.Tensor, channels: int = 256) -> float:
        """``max |folded(x) - self(x)| / max |self(x)|`` without dequantizing the layer twice,
        when the fold kept the base's codes and scales (every fold without trained scales): then
        ``folded(x) - self(x) = group_sum(x) @ E^T`` with ``E`` [N, L] the change of the
        group-constant part (``IntLinear.group_offset``) minus the adapter's (``group_delta``),
        in float64 for every output; ``max |y|`` is taken over ``channels`` evenly spaced outputs.
        A fold that cost O(N K / g) stays that cheap to check."""
        base = self.base
        same = (
            isinstance(folded, IntLinear)
            and (folded.bits, folded.group_size) == (base.bits, base.group_size)
            and _same(folded.qweight, base.qweight)
            and _same(folded.scales, base.scales)
        )
        if not same:
            return super().fold_error(folded, x)
        delta = self.group_delta()  # (N, L)
        e = folded.group_offset() - base.group_offset() - delta  # (N, L)
        sums = group_sum(x.double(), base.group_size)  # (M, L)
        diff = (sums @ e.T).abs().max()  # (M, N) -> ()
        count = min(channels, base.out_features)
        index = (
            torch.linspace(0, base.out_features - 1, count).round().long().to(base.scales.device)
        )
        with torch.no_grad():
            y = base.rows(index)(x).double() + sums @ delta[index].T  # (M, channels)
        return (diff / y.abs().max().clamp(min=1e-30)).item()

    def peft_problem(self, writing: bool) -> str | None:
        if self.train_scales:
            return (
                "trains its quantization scales (train_scales=True), which a PEFT adapter does "
                "not hold; keep it with lrc.save_adapters, or fold it and export the integer model"
            )
        if writing and self.zero_point != "float":
            return (
                "trains with zero_point='int' (rounded zero points), which PEFT's QA-LoRA cannot "
                "compute; fold it instead"
            )
        if self.partial:
            return (
                f"has a partial last group (input width {self.in_features} at group "
                f"{self.group_size}); PEFT's QA-LoRA needs the width divisible by its "
                "qalora_group_size: keep it with lrc.save_adapters, or fold it"
            )
        return None

    def peft_scale(self) -> float:
        """PEFT pools by the group mean times the number of groups ``L``: its ``A`` is ours / L."""
        return float(group_count(self.in_features, self.group_size))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind if self.zero_point == "float" else "qalora-int",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "alpha": self.alpha,
            "bits": self.base.bits,
            "group_size": self.group_size,
            "train_scales": self.train_scales,
            "adapter_params": sum(p.numel() for p in self.adapter_parameters()),
        }

    def lowering(self, fmt: str) -> str:
        return f"{self.base.lowering(fmt)} + float QA-LoRA adapter"

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, alpha={self.alpha:g}, group={self.group_size}, "
            f"zero_point={self.zero_point}"
            f"{', train_scales=True' if self.train_scales else ''}"
        )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same tensor (a fold shares it: O(1)), or an equal one."""
    shared = (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )
    return shared or torch.equal(a, b)
