"""The main job as a script: MiniLM -> QA-LoRA INT4 -> distil -> fold -> ONNX -> onnxruntime.

    python examples/minilm_qalora.py --steps 300 --group-size 32 --out out/minilm

Same as ``lowrank-compiler demo``; see ``lowrank_compiler/minilm.py`` for each step.
"""

from __future__ import annotations

import argparse

from lowrank_compiler.minilm import JobConfig, run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, choices=(2, 4, 8), default=4)
    ap.add_argument("--group-size", type=int, choices=(16, 32, 64, 128), default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-sentences", type=int, default=256)
    ap.add_argument("--calibration-sentences", type=int, default=512, help="GPTQ's statistics (training text)")
    ap.add_argument("--out", default="out/minilm")
    ap.add_argument("--no-baselines", action="store_true")
    args = ap.parse_args(argv)
    cfg = JobConfig(bits=args.bits, group_size=args.group_size, rank=args.rank, alpha=2.0 * args.rank,
                    steps=args.steps, eval_sentences=args.eval_sentences, out=args.out,
                    calibration_sentences=args.calibration_sentences,
                    baselines=not args.no_baselines)
    return run(cfg)


if __name__ == "__main__":
    main()
