"""What verification costs per GB: recomputing the sha256 that our ONNX files and genai folders
record when they are written (``runtime.load(..., verify=True)``).

    python -m benchmarks.bench_verify [--mib 512] [--repeats 3]

Writes an ONNX file of ``--mib`` MiB of weights (uint8 code tensors of 16 MiB, as an INT4 model's
are, plus float scales) through the exporter's writer, which records the weights' digest, and
times, best of ``--repeats``, with the file in the page cache (a warm read, as right after a copy):

- ``verify_file``: read and parse the file, hash every tensor (what ``load(file, verify=True)``
  adds to a load);
- ``file_sha256``: hash the file's bytes (a genai folder's check, per file);
- onnxruntime's ``InferenceSession`` creation on the same file, for scale.

Reports seconds per GB (1e9 bytes) and prints the CPU and its flags (``sha_ni`` decides the
hash's speed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from lowrank_compiler.runtime.digests import file_sha256
from lowrank_compiler.runtime.onnx.export import write_model
from lowrank_compiler.runtime.onnx.integrity import verify_file

BLOCK = 16 << 20


def weights_file(path: Path, mib: int) -> Path:
    """A valid model: ``y = x + sum of tensors' first elements``, holding ``mib`` MiB of codes."""
    rng = np.random.default_rng(0)
    inits, nodes, last = [], [], "x"
    for i in range(max(1, mib * (1 << 20) // BLOCK)):
        codes = rng.integers(0, 256, BLOCK, dtype=np.uint8)
        inits.append(numpy_helper.from_array(codes, f"codes{i}"))
        inits.append(
            numpy_helper.from_array(rng.random(BLOCK // 16, dtype=np.float32), f"scales{i}")
        )
        nodes += [
            helper.make_node("Slice", [f"scales{i}", "zero", "one"], [f"s{i}"]),
            helper.make_node("Add", [last, f"s{i}"], [f"y{i}"]),
        ]
        last = f"y{i}"
    inits += [numpy_helper.from_array(np.array([0], np.int64), "zero")]
    inits += [numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes,
        "weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    write_model(model, path)
    return path


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from benchmarks.common import machine, machine_line

    with tempfile.TemporaryDirectory() as tmp:
        path = weights_file(Path(tmp) / "w.onnx", args.mib)
        size = path.stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("*.data"))
        file_sha256(path)  # into the page cache
        seconds = {
            "verify_file (parse + hash the tensors)": best(lambda: verify_file(path), args.repeats),
            "file_sha256 (hash the bytes)": best(lambda: file_sha256(path), args.repeats),
            "onnxruntime session creation": best(
                lambda: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]),
                args.repeats,
            ),
        }
    print(machine_line(machine()))
    print(f"file of {size / 1e9:.3f} GB, page cache warm, best of {args.repeats}")
    print("| step | seconds | seconds per GB |")
    print("| --- | --- | --- |")
    per_gb = {k: v / (size / 1e9) for k, v in seconds.items()}
    for k, v in seconds.items():
        print(f"| {k} | {v:.3f} | {per_gb[k]:.3f} |")
    return {"bytes": size, "seconds": seconds, "seconds_per_gb": per_gb}


if __name__ == "__main__":
    main()
