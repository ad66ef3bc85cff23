"""What the jobs on a sentence encoder share: embeddings, the distillation loop, latency,
and onnxruntime's own INT4 quantizer as the peer to beat.

Sentence embedding = attention-masked mean of the last hidden state, L2-normalised.
Distillation loss = masked MSE between the student's and the teacher's last hidden states.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from ...runtime.errors import LowRankError
from ...runtime.files import commit, staged_file
from ...runtime.onnx.export import set_accuracy_level
from ...runtime.progress import training_bar
from ...runtime.quant.formats import KERNEL_BITS, qmax
from ...runtime.serve.load import load
from ..pretrained import MAX_TOKENS, tokenize


def mean_pool(hidden, mask):
    """Attention-masked mean, L2-normalised: (B, T, C), (B, T) -> (B, C)."""
    mask = mask[..., None].to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def torch_embed(model, tokenizer, sentences, batch=64, max_length=MAX_TOKENS):
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch):
            t = tokenize(tokenizer, sentences[i : i + batch], max_length)
            out.append(
                mean_pool(
                    model(
                        input_ids=t["input_ids"], attention_mask=t["attention_mask"]
                    ).last_hidden_state,
                    t["attention_mask"],
                )
            )
    return torch.cat(out)


def onnx_embed(session, tokenizer, sentences, batch=64, max_length=MAX_TOKENS):
    out = []
    for i in range(0, len(sentences), batch):
        t = tokenize(tokenizer, sentences[i : i + batch], max_length)
        hidden = session(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        out.append(mean_pool(hidden, t["attention_mask"]))
    return torch.cat(out)


def cosines(emb, ref) -> tuple[float, float]:
    """(mean, worst) cosine between matching rows of two L2-normalised embedding sets."""
    cos = (emb * ref).sum(-1)
    return cos.mean().item(), cos.min().item()


# trained scales' learning rate at 4 bits (a relative step): the best of 1e-4 ... 1e-2 on MiniLM
# (README)
SCALE_LR = 1e-3
SCALE_LR_BITS = 4  # the width SCALE_LR is set for; other widths scale it (``scale_rate``)


def scale_rate(scale_lr: float, bits: int) -> float:
    """The rate of a ``bits``-wide layer's scale gains: ``scale_lr * ((2^4 - 1) / (2^bits -
    1))^1.5``. A relative step ``d`` of a group's scale moves a code ``q - z`` by ``d (q - z)`` grid
    steps,
    and codes span ``2^bits - 1`` steps, so narrower grids need larger relative steps. The
    power is fitted, not derived: on MiniLM (32 distillation steps, README) the best gain rates
    measured 1e-2 at 2 bits, 3e-3 at 3 and 1e-3 at 4 (this gives 1.1e-2, 3.1e-3, 1e-3); at 4 bits
    1e-2 costs LR-QAT 0.005 of mean cosine, at 2 bits 1e-3 costs it 0.024."""
    return scale_lr * (qmax(SCALE_LR_BITS) / qmax(bits)) ** 1.5


def adamw(model, lr: float, scale_lr: float | None = None) -> torch.optim.AdamW:
    """AdamW on the trainable parameters; trained scales (``scale_gain``) at ``scale_rate(scale_lr,
    bits)`` per layer width when ``scale_lr`` is given, else at ``lr``."""
    gains: dict[int, list] = {}  # bits -> the scale gains of layers that wide
    for m in model.modules():
        gain = getattr(m, "scale_gain", None)
        if isinstance(gain, torch.nn.Parameter) and gain.requires_grad:
            gains.setdefault(m.base.bits, []).append(gain)
    taken = {id(p) for ps in gains.values() for p in ps}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in taken]}]
    for bits, ps in sorted(gains.items()):
        groups.append({"params": ps, "lr": lr if scale_lr is None else scale_rate(scale_lr, bits)})
    return torch.optim.AdamW(groups, lr=lr)


def distil(
    student,
    teacher,
    tokenizer,
    sentences,
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    label: str,
    scale_lr: float | None = None,
) -> list[float]:
    """Masked MSE between student and teacher last hidden states, AdamW on the adapters; the
    loss of every step. ``scale_lr``: the learning rate of trained scales (``scale_gain``, a
    log factor: a relative step), when it differs from the adapters' ``lr``."""
    gen = torch.Generator().manual_seed(seed)
    opt = adamw(student, lr, scale_lr)
    student.eval()  # dropout off: the target is deterministic, and so is what the adapters learn
    losses = []
    bar = training_bar(steps, label)
    for _ in bar:
        idx = torch.randint(len(sentences), (batch,), generator=gen).tolist()
        t = tokenize(tokenizer, [sentences[i] for i in idx])
        mask = t["attention_mask"][..., None].float()  # (B, T, 1)
        with torch.no_grad():
            target = teacher(
                input_ids=t["input_ids"], attention_mask=t["attention_mask"]
            ).last_hidden_state
        hidden = student(
            input_ids=t["input_ids"], attention_mask=t["attention_mask"]
        ).last_hidden_state
        loss = (((hidden - target) ** 2) * mask).sum() / (mask.sum() * hidden.shape[-1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.5f}")
    return losses


def latencies_ms(
    paths: dict,
    tokenizer,
    sentence: str,
    level: int,
    *,
    rounds: int = 10,
    runs: int = 5,
    max_length: int = MAX_TOKENS,
) -> dict:
    """Median ms per file at batch 1, one thread, MatMulNBits at accuracy ``level``; the files'
    rounds are interleaved (``runs`` calls of each file per round) so that a busy moment of the
    machine falls on every file alike and their ratios hold from run to run."""
    with contextlib.ExitStack() as stack:
        sessions = {}
        for name, path in paths.items():
            if level:
                staged = stack.enter_context(
                    staged_file(path.with_name(f"{path.stem}.acc{level}.onnx"))
                )
                path = set_accuracy_level(path, staged, level)
            sessions[name] = load(path, threads=1)
        t = tokenize(tokenizer, [sentence], max_length)
        feed = {"input_ids": t["input_ids"].numpy(), "attention_mask": t["attention_mask"].numpy()}
        times = {name: [] for name in sessions}
        for session in sessions.values():
            for _ in range(3):
                session(**feed)
        for _ in range(rounds):
            for name, session in sessions.items():
                for _ in range(runs):
                    t0 = time.perf_counter()
                    session(**feed)
                    times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(ts) for name, ts in times.items()}


def ort_quantize(src: Path, dst: Path, *, bits: int, group_size: int) -> Path:
    """onnxruntime's own INT-``bits`` quantizer (RTN min-max, asymmetric, accuracy level 0) on an
    fp32 ONNX file: the peer our exported files are measured against."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    for name in (
        "onnxruntime.quantization.matmul_nbits_quantizer",
        "onnx_ir",
        "onnxscript",
        "onnxruntime.quantization",
    ):  # it logs every node it visits
        logging.getLogger(name).setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(
        str(src), bits=bits, block_size=group_size, is_symmetric=False, accuracy_level=0
    )
    q.process()
    with staged_file(dst) as tmp:
        q.model.save_model_to_file(str(tmp))
        commit(tmp, dst)
    return dst


def check_out_dir(out: Path) -> None:
    """Create ``out`` and check it is writable, before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise LowRankError(
            f"cannot write to output directory {str(out)!r}: {e.strerror}; pass --out with a "
            f"writable directory"
        ) from None


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    steps: int,
    steps_help: str,
    out: str,
    group_size: int = 32,
    rank: int = 16,
) -> None:
    """The options every job takes: the integer format, the adapter rank, the training steps,
    the output directory."""
    parser.add_argument("--bits", type=int, choices=KERNEL_BITS, default=4)
    parser.add_argument("--group-size", type=int, choices=(16, 32, 64, 128), default=group_size)
    parser.add_argument("--rank", type=int, default=rank)
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--out", default=out, help="output directory")


def add_row_arguments(
    parser: argparse.ArgumentParser, methods, lrs, keys, lr_steps: int, default_help: str
) -> None:
    """The options of a job that measures rows: which rows (``--methods``) and the learning
    rates each trained row tries first (``--lrs``)."""
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        default=list(methods),
        help=f"rows to measure, of {', '.join(keys)} (default: {default_help})",
    )
    parser.add_argument(
        "--lrs",
        nargs="+",
        type=float,
        default=list(lrs),
        metavar="LR",
        help=f"learning rates each trained row tries ({lr_steps} steps each) before training",
    )
