"""Command line: ``lowrank-compiler <command>`` (also ``python -m lowrank_compiler``).

Commands:
  demo    compile the built-in small GPT with LoRA and print the summary
  passes  list the registered passes, their options and defaults
"""

from __future__ import annotations

import argparse
import sys

from .runtime.errors import LowRankError


def _demo(args) -> int:
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
    demo = sub.add_parser("demo", help="compile the built-in small GPT with LoRA and print the summary")
    demo.add_argument("--rank", type=int, default=8)
    demo.add_argument("--target", nargs="+", default=["all-linear"], help="module-name patterns")
    demo.add_argument("--dump-dir", default=None, help="write graph dumps here")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(fn=_demo)
    sub.add_parser("passes", help="list the registered passes").set_defaults(fn=_passes)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (LowRankError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
