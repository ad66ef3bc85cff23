"""Calibration statistics: the second moment of each layer's input over real data.

    H = (1 / T) * sum_t x_t x_t^T        x_t: one token's input row [K], T tokens in all

accumulated in float64 (each batch's product in float32) while the float model runs on the
calibration batches (no grad, eval mode, then the model's modes are restored). A batch is what the
model takes: a
dict of keyword arguments, a tuple of positional ones, or one tensor. When a dict batch
holds an ``attention_mask`` ``(B, T)`` and a layer's input is ``(B, T, K)``, padded
tokens are left out: they are not text the model will see, and on short sentences
they would outweigh it.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping

import torch
from torch import nn

from ...runtime.progress import progress


def _call(model: nn.Module, batch):
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def calibration_record(batches: list) -> dict:
    """``{"batches": n, "sha256": ...}``: what the calibration data was, for the pipeline text.

    The digest covers every batch in order: each tensor's name (a dict key or position),
    dtype, shape and bytes; other values by ``repr``. Two runs calibrated on the same data
    print the same pipeline; a run on other data fails the ``calibrate`` pass's check."""
    h = hashlib.sha256()
    for batch in batches:
        items = (
            sorted(batch.items())
            if isinstance(batch, Mapping)
            else (enumerate(batch) if isinstance(batch, (tuple, list)) else [(0, batch)])
        )
        h.update(b"batch|")
        for key, value in items:
            if isinstance(value, torch.Tensor):
                t = value.detach().to("cpu").contiguous()
                h.update(f"{key}|{t.dtype}|{list(t.shape)}|".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            else:
                h.update(f"{key}|{value!r}|".encode())
    return {"batches": len(batches), "sha256": h.hexdigest()}


def input_moments(
    model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable
) -> tuple[dict, int]:
    """-> ({layer name: H float32 [K, K]}, number of batches) for every module in ``layers``."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    state: dict = {"mask": None}

    def hook_for(name):
        def hook(module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            if state.get("input") is not x:  # q, k and v read one tensor: multiply it once
                rows = x.detach()
                mask = state["mask"]
                if (
                    mask is not None
                    and rows.dim() == 3
                    and tuple(rows.shape[:2]) == tuple(mask.shape)
                ):
                    rows = rows[mask.bool()]  # (tokens, K): real tokens only
                rows = rows.reshape(-1, rows.shape[-1]).to(torch.float32)  # (T, K)
                # one batch's product in float32 (fast), the running sum over batches in float64
                state["input"], state["product"] = (
                    x,
                    ((rows.T @ rows).to(torch.float64), rows.shape[0]),
                )
            product, tokens = state["product"]
            sums[name] = sums[name] + product if name in sums else product.clone()
            counts[name] = counts.get(name, 0) + tokens

        return hook

    handles = [
        m.register_forward_pre_hook(hook_for(name), with_kwargs=True) for name, m in layers.items()
    ]
    modes = {m: m.training for m in model.modules()}
    n = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in progress(batches, "calibrate", unit="batch"):
                state["mask"] = batch.get("attention_mask") if isinstance(batch, Mapping) else None
                _call(model, batch)
                state.pop("input", None), state.pop("product", None)  # no tensor outlives its batch
                n += 1
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
    return {name: (s / max(counts[name], 1)).to(torch.float32) for name, s in sums.items()}, n
