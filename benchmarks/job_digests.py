"""Digests of what the two jobs write, to compare the outputs of two versions of the code.

    python benchmarks/job_digests.py OUT

runs ``lowrank-compiler demo`` (LR-QAT and QA-LoRA, 3 steps) and ``demo code-search`` (12
steps, five standard-library modules) at a small setting into ``OUT``, then prints one line per
file: its path, the sha256 of its bytes and, for ``.onnx`` files, the sha256 of the model with
each node's recorded source location left out (``doc_string`` and ``metadata_props``: the
exporter records file paths, line numbers and module paths, which move when code moves).
Two runs of the same code print the same lines; a refactor that changes nothing computed
prints the same last column. ``docs/layout.md`` records a comparison.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import onnx

DEMO = [
    "demo",
    "--steps",
    "3",
    "--eval-sentences",
    "16",
    "--calibration-sentences",
    "32",
    "--methods",
    "lrqat,qalora",
]
CODE_SEARCH = [
    "demo",
    "code-search",
    "--steps",
    "12",
    "--lrs",
    "1e-3",
    "--eval-pairs",
    "32",
    "--train-modules",
    "json.decoder",
    "json.encoder",
    "textwrap",
    "shlex",
    "difflib",
    "--eval-modules",
    "tarfile",
]


def run_jobs(out: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for name, args in (("minilm", DEMO), ("code-search", CODE_SEARCH)):
        if not (out / name).exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "lowrank_compiler",
                    "--quiet",
                    *args,
                    "--out",
                    str(out / name),
                ],
                check=True,
                env=env,
            )


def _strip(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _strip(attr.g)
    for value in [*graph.value_info, *graph.input, *graph.output, *graph.initializer]:
        del value.metadata_props[:]


def computed_digest(path: Path) -> str:
    """sha256 of the model without the source locations the exporter records."""
    model = onnx.load(str(path))
    _strip(model.graph)
    for function in model.functions:
        for node in function.node:
            node.doc_string = ""
            del node.metadata_props[:]
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:] or ["out/digests"])[0])
    run_jobs(out)
    for path in sorted(out.rglob("*")):
        if path.suffix in (".onnx", ".safetensors") or path.name == "adapter_config.json":
            raw = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            print(
                path.relative_to(out), raw, computed_digest(path) if path.suffix == ".onnx" else ""
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
