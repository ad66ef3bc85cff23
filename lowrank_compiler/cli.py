"""Command line: ``lowrank-compiler <command>`` (also ``python -m lowrank_compiler``).

Commands:
  demo    the main job: MiniLM -> QA-LoRA INT4 -> train -> fold -> ONNX -> onnxruntime, one table
  toy     compile the built-in small GPT with LoRA and print the summary
  passes  list the registered passes, their options and defaults
"""

from __future__ import annotations

import argparse
import sys

from .runtime.errors import LowRankError


def _minilm(args) -> int:
    from .minilm import JobConfig, run

    cfg = JobConfig(bits=args.bits, group_size=args.group_size, rank=args.rank, steps=args.steps, out=args.out,
                    eval_sentences=args.eval_sentences, baselines=not args.no_baselines, alpha=2.0 * args.rank,
                    quantizer=args.quantizer)
    run(cfg)
    print(f"written to {args.out}: qalora_int4.onnx (the deployable model), the baselines' files, "
          f"adapters.safetensors, dumps/, results.md")
    return 0


def _toy(args) -> int:
    import torch

    from .api import compile
    from .policy import Policy
    from .summary import summary
    from .toy import GPTConfig, TinyGPT

    torch.manual_seed(args.seed)
    model = TinyGPT(GPTConfig())
    policy = Policy(method="lora", target=args.target, rank=args.rank, alpha=2.0 * args.rank)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 16))
    before = model(idx)
    compile(model, policy, dump_dir=args.dump_dir)
    diff = (model(idx) - before).abs().max().item()
    print(summary(model))
    print(f"max |compiled - original| on a random batch: {diff:g} (B starts at zero)")
    if args.dump_dir:
        print(f"graph dumps written to {args.dump_dir}")
    return 0


def _passes(args) -> int:
    from .passes import registered_passes

    for name, info in sorted(registered_passes().items()):
        opts = ", ".join(f"{k}={v!r}" for k, v in info.options.items())
        print(f"{name:16s} {info.summary}\n{'':16s} options: {opts or '-'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lowrank-compiler", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("demo", help="the main job on MiniLM (a few minutes on 2 cores)")
    job.add_argument("--bits", type=int, choices=(2, 4, 8), default=4)
    job.add_argument("--group-size", type=int, choices=(16, 32, 64, 128), default=32)
    job.add_argument("--rank", type=int, default=16)
    job.add_argument("--steps", type=int, default=300, help="training steps of 16 sentences")
    job.add_argument("--eval-sentences", type=int, default=256)
    job.add_argument("--quantizer", choices=("gptq", "rtn"), default="gptq",
                     help="how the INT base is rounded before training (gptq: calibrated on training text)")
    job.add_argument("--out", default="out/minilm", help="output directory")
    job.add_argument("--no-baselines", action="store_true", help="skip RTN, onnxruntime's quantizer and QLoRA")
    job.set_defaults(fn=_minilm)
    toy = sub.add_parser("toy", help="compile the built-in small GPT with LoRA and print the summary")
    toy.add_argument("--rank", type=int, default=8)
    toy.add_argument("--target", nargs="+", default=["all-linear"], help="module-name patterns")
    toy.add_argument("--dump-dir", default=None, help="write graph dumps here")
    toy.add_argument("--seed", type=int, default=0)
    toy.set_defaults(fn=_toy)
    sub.add_parser("passes", help="list the registered passes").set_defaults(fn=_passes)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (LowRankError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
