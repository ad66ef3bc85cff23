"""The distillation job as a script: MiniLM -> LR-QAT INT4 (or QA-LoRA) -> distil -> fold -> ONNX ->
onnxruntime.

    python examples/minilm_qalora.py --steps 300 --group-size 32 --out out/minilm

Same as ``lowrank-compiler demo``; see ``lowrank_compiler/app/jobs/distill.py`` for each step.
"""

from __future__ import annotations

import argparse

from lowrank_compiler.app.jobs.distill import add_arguments, config_from_args, run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run(config_from_args(ap.parse_args(argv)))


if __name__ == "__main__":
    main()
