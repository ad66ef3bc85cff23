"""The LLM job's training loop and measurements: language-model training on token windows,
perplexity in PyTorch and from an exported folder's own logits, greedy tokens three ways, and
decode time in onnxruntime-genai.

Perplexity is ``exp`` of the mean next-token negative log-likelihood over every position of the
held-out windows (teacher forced: one prefill per window, no cache), the same positions for every
row. A folder's logits come from onnxruntime running its ``model.onnx`` through our loop's
``step`` (an empty cache, the whole window as the prompt).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...runtime.progress import training_bar
from ...runtime.serve.generate import DecoderSession
from .encoder import adamw
from .retrieval import Resumable

EVAL_BATCH = 16


class LMTrainer(Resumable):
    """AdamW (trained scales at ``scale_lr``) on next-token loss over windows drawn without
    repeats inside an epoch, the rates decaying linearly to zero over ``total`` steps;
    ``snapshot`` / ``restore`` keep everything that decides the next steps, so a run stopped and
    resumed trains as one that never stopped."""

    def __init__(self, model, windows, *, batch, lr, total, seed, label, scale_lr=None):
        self.model, self.windows, self.batch, self.lr, self.label = model, windows, batch, lr, label
        self.total = total
        self.gen = torch.Generator().manual_seed(seed)
        self.opt = adamw(model, lr, scale_lr)
        self.base_lrs = [group["lr"] for group in self.opt.param_groups]
        self.order: list[int] = []
        self.done = 0
        self.step_s: list[float] = []

    def _next_batch(self) -> torch.Tensor:
        if len(self.order) < self.batch:
            self.order = torch.randperm(len(self.windows), generator=self.gen).tolist()
        idx, self.order = self.order[: self.batch], self.order[self.batch :]
        return self.windows[idx]

    def run(self, steps: int) -> list[float]:
        self.model.train()
        losses = []
        bar = training_bar(steps, self.label)
        for _ in bar:
            ids = self._next_batch()  # (B, T)
            start = time.perf_counter()
            loss = self.model(ids, labels=ids).loss
            self.opt.zero_grad()
            loss.backward()
            decay = max(0.0, 1.0 - self.done / self.total)  # from ``done``: restored runs agree
            for group, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
                group["lr"] = base * decay
            self.opt.step()
            self.step_s.append(time.perf_counter() - start)
            self.done += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
        self.model.eval()
        return losses


def nll_sum(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Summed next-token negative log-likelihood (float64); logits (B, T, V), ids (B, T)."""
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    return -logp.gather(-1, ids[:, 1:, None]).sum().item()


def torch_perplexity(model, windows: torch.Tensor) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(windows), EVAL_BATCH):
            ids = windows[i : i + EVAL_BATCH]
            total += nll_sum(model(ids).logits.float(), ids)
    return float(np.exp(total / (len(windows) * (windows.shape[1] - 1))))


def folder_perplexity(folder, windows: torch.Tensor) -> float:
    session = DecoderSession(folder)
    total = 0.0
    for i in range(0, len(windows), EVAL_BATCH):
        ids = windows[i : i + EVAL_BATCH].numpy()
        b, t = ids.shape
        mask = np.ones((b, t), np.int64)
        positions = np.broadcast_to(np.arange(t, dtype=np.int64), (b, t))
        logits, _ = session.step(ids, mask, positions, session.empty_past(b))
        total += nll_sum(torch.from_numpy(np.asarray(logits)), windows[i : i + EVAL_BATCH])
    return float(np.exp(total / (len(windows) * (windows.shape[1] - 1))))


def torch_greedy(model, prompt: torch.Tensor, new: int) -> tuple[list[int], list[float]]:
    """Greedy tokens of the PyTorch model and each step's top-2 logit margin (relative)."""
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    margins = []
    for step in out.logits:
        row = step[0].float()
        top2 = row.topk(2).values
        margins.append(float(top2[0] - top2[1]) / float(row.abs().max()))
    return out.sequences[0, prompt.shape[1] :].tolist(), margins


def ours_greedy(folder, prompt: torch.Tensor, new: int) -> list[int]:
    out = DecoderSession(folder).generate(prompt, torch.ones_like(prompt), max_new_tokens=new)
    return out[0, prompt.shape[1] :].tolist()


def og_greedy(folder, prompt: torch.Tensor, new: int) -> list[int] | None:
    """onnxruntime-genai's greedy tokens, or None where it is not installed."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=prompt.shape[1] + new, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt.numpy().astype(np.int32))
    tokens = []
    while not generator.is_done() and len(tokens) < new:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def same_up_to_ties(got: list[int], want: list[int], margins: list[float], tie=1e-3) -> bool:
    """Equal tokens, or equal until a step where the PyTorch model's own top two were within
    ``tie`` of each other (a near tie float rounding may break either way)."""
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return margins[i] < tie
    return len(got) == len(want)


def decode_ms(folders: dict, prompt: torch.Tensor, new: int, rounds: int) -> dict[str, list]:
    """Each round's milliseconds per generated token in onnxruntime-genai (the prompt's step left
    out), folders taken in turn each round so machine noise hits all alike; {} without it."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return {}
    models = {k: og.Model(str(v)) for k, v in folders.items()}
    times: dict[str, list[float]] = {k: [] for k in folders}
    for _ in range(rounds + 1):  # the first round warms up
        for key, model in models.items():
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=prompt.shape[1] + new, do_sample=False)
            generator = og.Generator(model, params)
            generator.append_tokens(prompt.numpy().astype(np.int32))
            generator.generate_next_token()  # the prompt's step
            start, count = time.perf_counter(), 0
            while not generator.is_done() and count < new - 1:
                generator.generate_next_token()
                count += 1
            times[key].append(1000 * (time.perf_counter() - start) / max(count, 1))
    return {k: v[1:] for k, v in times.items()}
