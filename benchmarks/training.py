"""5. Training cost: step time and peak memory of LoRA over fp32, QLoRA (NF4), QA-LoRA and LR-QAT
(INT4, with and without trained scales).

For each model size (the hand-written GPT of ``lowrank_compiler.app.toy``, random weights),
each method trains in its own fresh process (``spawn``), so its memory is its own: the
process imports torch, builds and compiles the model (rank 16 on every block linear,
the head left float), and then waits. The parent asks the trainer processes for one full step
(forward, backward, AdamW) each in turn, round after round, so machine noise hits all
alike, and takes the median of each process's step times.

Memory, in each trainer process: the resident-set high-water mark (``VmHWM``) over the training
steps alone: reset just before them (``/proc/self/clear_refs``), after the heap pages
freed by the build were handed back (glibc ``malloc_trim``), so building the fp32 model
before it is quantized does not count. Where the reset is not allowed, the
lifetime peak (``getrusage`` ``ru_maxrss``), which does include the build; the report
says which. Both are whole-process figures (interpreter and torch included); the
footprint is the peak minus the process's size after its imports. The frozen base is
the bytes of the targeted layers' weights as allocated (``common.base_linear_bytes``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import multiprocessing as mp
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from .common import check_settings

METHODS = {
    "LoRA over fp32": {"method": "lora"},
    "QLoRA (NF4)": {"method": "qlora"},
    "QA-LoRA (INT4 g32)": {"method": "qalora"},
    "LR-QAT (INT4 g32)": {"method": "lrqat"},
    # the jobs' settings: each group's scale trained too (the scale gradient costs a [N, K] product)
    "QA-LoRA + scales (INT4 g32)": {"method": "qalora", "train_scales": True},
    "LR-QAT + scales (INT4 g32)": {"method": "lrqat", "train_scales": True},
}


@dataclass(frozen=True)
class Size:
    label: str
    n_layer: int
    n_embd: int
    vocab: int
    batch: int
    seq: int

    def __post_init__(self):
        check_settings(
            f"training size {self.label!r}",
            n_layer=self.n_layer,
            n_embd=self.n_embd,
            vocab=self.vocab,
            batch=self.batch,
            seq=self.seq,
        )
        if self.n_embd % 64:
            raise ValueError(
                f"training size {self.label!r}: n_embd must be a multiple of 64 (heads of 64), "
                f"got {self.n_embd!r}"
            )


@dataclass(frozen=True)
class Settings:
    sizes: tuple[Size, ...] = (
        Size("~20M", 6, 512, 4096, 8, 128),
        Size("~100M", 12, 768, 16384, 4, 128),
    )
    steps: int = 4  # timed rounds, after one warm-up round

    def __post_init__(self):
        check_settings("training", steps=self.steps)
        if not self.sizes:
            raise ValueError("training.sizes must name at least one model size")


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _trim() -> None:
    """glibc's malloc_trim: return freed heap memory to the system (a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def trainer(conn, size: Size, policy: dict) -> None:
    """One method on one model, in a process of its own; answers "step" and "done"."""
    import torch

    import lowrank_compiler as lrc
    from lowrank_compiler.app.toy import GPTConfig, TinyGPT

    from .common import base_linear_bytes

    try:
        rss_imports = _status_kib("VmRSS")
        torch.manual_seed(0)
        cfg = GPTConfig(
            vocab_size=size.vocab,
            block_size=size.seq,
            n_layer=size.n_layer,
            n_head=size.n_embd // 64,
            n_embd=size.n_embd,
        )
        model = TinyGPT(cfg)
        params = sum(p.numel() for p in model.parameters())
        lrc.compile(model, lrc.Policy(rank=16, alpha=32, bits=4, group_size=32, **policy))
        x = torch.randint(
            0, size.vocab, (size.batch, size.seq + 1), generator=torch.Generator().manual_seed(1)
        )
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        base_bytes, weights = base_linear_bytes(model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        gc.collect()
        # hand back heap pages freed when the fp32 weights were replaced: the build is not training
        _trim()
        rss_model = _status_kib("VmRSS")
        reset = _reset_peak()
        conn.send(
            {
                "params": params,
                "trainable": trainable,
                "base_bytes": base_bytes,
                "weights": weights,
                "rss_imports_kib": rss_imports,
                "rss_model_kib": rss_model,
                "peak_reset": reset,
            }
        )
        while conn.recv() == "step":
            t = time.perf_counter()
            logits = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            conn.send(time.perf_counter() - t)
        peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        conn.send(
            {
                "peak_kib": peak,
                "peak_source": "VmHWM over the steps" if reset else "ru_maxrss (lifetime)",
            }
        )
    except BaseException as e:  # tell the parent, which would otherwise wait forever
        conn.send({"error": f"{type(e).__name__}: {e}"})
        raise


def measure(size: Size, steps: int, log) -> dict:
    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    for name, policy in METHODS.items():
        parent, child = ctx.Pipe()
        procs[name] = ctx.Process(target=trainer, args=(child, size, policy), daemon=True)
        procs[name].start()
        conns[name] = parent
    try:
        info = {name: _reply(conns[name], procs[name], name) for name in METHODS}
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        for r in range(steps + 1):
            log(f"  {size.label}: round {r + 1} of {steps + 1} (first is warm-up)")
            for name in METHODS:
                conns[name].send("step")
                t = _reply(conns[name], procs[name], name)
                if r:
                    times[name].append(t)
        for name in METHODS:
            conns[name].send("done")
            info[name].update(_reply(conns[name], procs[name], name))
            info[name]["step_s"] = statistics.median(times[name])
            info[name]["step_samples"] = times[name]
    finally:
        for p in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return {"size": dataclasses.asdict(size), "methods": info}


def _reply(conn, proc, name: str):
    while not conn.poll(5.0):
        if not proc.is_alive():
            raise RuntimeError(
                f"the {name} trainer process exited with code {proc.exitcode} before answering"
            )
    msg = conn.recv()
    if isinstance(msg, dict) and "error" in msg:
        raise RuntimeError(f"the {name} trainer process failed: {msg['error']}")
    return msg


def run(s: Settings, work: Path, log) -> dict:
    out = []
    for size in s.sizes:
        log(
            f"training: {size.label} GPT ({size.n_layer} layers, width {size.n_embd}), batch "
            f"{size.batch} x "
            f"seq {size.seq}, one process per method"
        )
        out.append(measure(size, s.steps, log))
    return {"sizes": out, "settings": dataclasses.asdict(s)}
