"""4b. Batch-1 INT4 latency against the memory-bandwidth floor.

At batch 1, sequence 1 a linear layer reads every weight byte once and does two flops
per weight: the time cannot be below ``weight bytes / memory bandwidth``. On a model
whose INT4 weights are several times the last-level cache (a Llama-shaped stack 4096
wide, MLP 11008), that floor is what the kernel is up against.

The bandwidth is measured in the same run, interleaved with the latency rounds
(``common.Bandwidth``), with as many threads as the sessions use: one thread, and every
core. Each file's floor uses the bytes its linear layers' weights occupy in the file
(``onnx_bytes.linear_weights``: codes, scales, zero points, correction); embeddings and
norms are left out (one row of each is read per token). Ratio = latency / floor.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import Bandwidth, check_settings
from .onnx_bytes import linear_weights
from .speed import check_model, prepare, runners_for


@dataclass(frozen=True)
class Settings:
    hidden: int = 4096
    layers: int = 1
    repeats: int = 20
    bandwidth_bytes: int = 1 << 30
    formats: tuple[str, ...] = ("int", "split")  # ours

    def __post_init__(self):
        check_settings(
            "floor",
            hidden=self.hidden,
            layers=self.layers,
            repeats=self.repeats,
            bandwidth_bytes=self.bandwidth_bytes,
        )
        check_model("floor", self.hidden, self.formats)


def run(s: Settings, work: Path, log) -> dict:
    started = time.perf_counter()
    log(f"floor: Llama-shaped, hidden {s.hidden}, {s.layers} layer(s)")
    files = prepare(s.hidden, s.layers, work, log, s.formats)
    prep_s = time.perf_counter() - started
    cores = os.cpu_count() or 1
    threads = sorted({1, cores})
    weight_bytes = {k: linear_weights(p)[0] for k, p in files.items() if not k.endswith("_acc4")}
    bw = Bandwidth(s.bandwidth_bytes)
    sessions = {t: runners_for(files, t) for t in threads}
    feed = {"input_ids": np.array([[7]], dtype=np.int64)}
    samples: dict[str, list[float]] = {}
    bw_samples: dict[int, list[float]] = {t: [] for t in threads}
    for t in threads:  # warm-up
        bw.measure(t)
        for sess in sessions[t].values():
            sess.run(None, feed)
    log(
        f"  {s.repeats} rounds: bandwidth at {threads} thread(s) and "
        f"{sum(map(len, sessions.values()))} "
        f"sessions, interleaved"
    )
    for _ in range(s.repeats):
        for t in threads:
            bw_samples[t].append(bw.measure(t))
            for name, sess in sessions[t].items():
                t0 = time.perf_counter()
                sess.run(None, feed)
                samples.setdefault(f"{name}@{t}", []).append(time.perf_counter() - t0)
    bandwidth = {t: statistics.median(v) for t, v in bw_samples.items()}
    rows = {}
    for key, v in samples.items():
        name, t = key.rsplit("@", 1)
        model = name.split("/")[0]
        latency = statistics.median(v)
        floor = weight_bytes[model] / bandwidth[int(t)]
        rows[key] = {
            "model": model,
            "level": name.split("/acc")[1] if "/acc" in name else None,
            "threads": int(t),
            "latency_s": latency,
            "floor_s": floor,
            "ratio": latency / floor,
        }
    return {
        "bandwidth": {str(t): v for t, v in bandwidth.items()},
        "rows": rows,
        "weight_bytes": weight_bytes,
        "prepare_s": prep_s,
        "settings": dataclasses.asdict(s),
    }
