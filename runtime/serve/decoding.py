"""How ``DecoderSession.generate`` reads its arguments and picks each token.

- The prompt: ``input_ids`` and ``attention_mask`` are ``[batch, seq]`` (or ``[seq]``) integers;
  the mask is left padding only (each row zeros, then ones, never all zeros), as HF's
  ``generate`` wants for decoders.
- ``sample``: softmax(logits / temperature) after top-k (keep the k largest; 0: off) and top-p
  filtering (keep the smallest set of top tokens whose probability reaches ``top_p``: a token
  is dropped when the mass ranked above it is already >= ``top_p``, so the first always stays;
  1.0: off), then one inverse-CDF draw per row, ``u ~ U[0, 1)`` from the caller's generator.
- A streamer is a callable (each step's tokens) or an object with HF's ``put`` / ``end``.
"""

from __future__ import annotations

import numpy as np
import torch


def eos_set(eos) -> tuple[int, ...]:
    """The stop tokens: none, one id or a list of ids."""
    if eos is None:
        return ()
    if isinstance(eos, (int, np.integer)) and not isinstance(eos, bool):
        return (int(eos),)
    if isinstance(eos, (list, tuple)) and all(
        isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in eos
    ):
        return tuple(int(e) for e in eos)
    raise ValueError(f"eos_token_id must be an int, a list of ints or None, got {eos!r}")


def _as_array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name} must be [batch, seq] (or [seq]), got shape {list(a.shape)}")
    if not np.issubdtype(a.dtype, np.integer) and not np.issubdtype(a.dtype, np.bool_):
        raise ValueError(f"{name} must hold integers, got {a.dtype.name}")
    return a.astype(np.int64)


def prompt_arrays(input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)``, both ``[batch, prompt]`` int64: a non-empty prompt, left-padded (each mask
    row zeros then ones, not all zeros; no mask: all ones)."""
    ids = _as_array(input_ids, "input_ids")
    if ids.shape[1] == 0:
        raise ValueError("input_ids is empty: give at least one prompt token per row")
    mask = (
        np.ones_like(ids) if attention_mask is None else _as_array(attention_mask, "attention_mask")
    )
    if mask.shape != ids.shape:
        raise ValueError(
            f"attention_mask has shape {list(mask.shape)}, input_ids {list(ids.shape)}"
        )
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only")
    if (np.diff(mask, axis=1) < 0).any():
        raise ValueError(
            "attention_mask is padded on the right; decoders need left padding (each row "
            "zeros, "
            "then ones): tokenizer.padding_side = 'left'"
        )
    if (mask.sum(axis=1) == 0).any():
        raise ValueError("a row of attention_mask is all padding")
    return ids, mask


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """``do_sample``'s settings: temperature > 0, top_k an integer >= 0, top_p in (0, 1]."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0: off), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def streamer_put(streamer):
    """HF's ``put`` of a streamer object; None for a plain callable (or no streamer)."""
    put = getattr(streamer, "put", None)
    if streamer is not None and put is None and not callable(streamer):
        raise ValueError(
            "streamer must be a callable or have put() and end() (HF's streamer protocol)"
        )
    return put


def sample(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator
) -> np.ndarray:
    """One token per row of ``logits`` ``[batch, vocab]`` (module docstring), ``[batch]``."""
    x = logits.astype(np.float64) / temperature  # (B, V)
    if 0 < top_k < x.shape[-1]:
        kth = np.partition(x, -top_k, axis=-1)[:, -top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if top_p < 1:
        order = np.argsort(-x, axis=-1, kind="stable")
        sorted_x = np.take_along_axis(x, order, axis=-1)
        p = np.exp(sorted_x - sorted_x[:, :1])
        p /= p.sum(axis=-1, keepdims=True)
        before = np.cumsum(p, axis=-1) - p  # probability mass of the tokens ranked above
        drop = before >= top_p  # the first token always stays
        np.put_along_axis(x, order, np.where(drop, -np.inf, sorted_x), axis=-1)
    p = np.exp(x - x.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    u = rng.random((x.shape[0], 1))
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), x.shape[-1] - 1)


__all__ = ["check_sampling", "eos_set", "prompt_arrays", "sample", "streamer_put"]
