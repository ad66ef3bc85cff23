"""The command line's parser: every command's options and help texts, nothing that runs.

One function per command (or pair of commands sharing their options) adds its subparser and
points ``fn`` at its handler in ``commands`` or ``commands_genai``; ``cli.main`` parses and
calls it. The options live apart from the handlers so that ``--help`` reads in one place.
"""

from __future__ import annotations

import argparse

from ..runtime.quant.formats import (
    ACCURACY_LEVELS,
    ADAPTER_INPUTS,
    EMBEDDINGS,
    EXPORT_FORMATS,
    FOLD_ZEROS,
)
from . import commands, commands_genai

QUIET_HELP = "no progress bars, notes or warnings"
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


def build_parser(description: str) -> argparse.ArgumentParser:
    """The whole parser; ``description`` is the overview ``lowrank-compiler --help`` prints."""
    parser = argparse.ArgumentParser(
        prog="lowrank-compiler",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    # -q after the command too; SUPPRESS keeps a command's absent -q from resetting the main one
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_model_commands(sub, quiet)
    _add_fold(sub, quiet)
    _add_export(sub, quiet)
    _add_generate(sub, quiet)
    _add_inspect(sub)
    _add_demo(sub)
    _add_toy(sub)
    sub.add_parser("passes", help="list the registered passes").set_defaults(fn=commands.run_passes)
    return parser


def _add_model_commands(sub, quiet) -> None:
    """``compile`` and ``dump``: both build MODEL with POLICY into a new directory."""
    for name, fn, what in (
        ("compile", commands.run_compile, "compile MODEL into a directory"),
        ("dump", commands.run_dump, "write graph dumps of MODEL compiled with POLICY"),
    ):
        p = sub.add_parser(
            name,
            parents=[quiet],
            help=what,
            description=what[0].upper()
            + what[1:]
            + (
                ": lowrank.json (how to rebuild the base), policy.json, state.safetensors "
                "(adapters and quantized weights; the base model's own weights are not copied), "
                "and dumps/ with --dump."
                if name == "compile"
                else ": NN-<pass>.txt and pipeline.txt, nothing else; --view then opens the "
                "compiled model in Model Explorer, each node coloured by the pass that made it."
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
        else:
            _add_view_options(p)
        p.set_defaults(fn=fn)


def _add_view_options(p) -> None:
    """``dump --view``: the dumps as Model Explorer node data over the compiled model."""
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--view",
        action="store_true",
        help="then open the compiled model in Model Explorer (pip install "
        "'lowrank-compiler[view]') with DIR/explorer-passes.json and explorer-report.json laid "
        "over it; serves until Ctrl+C",
    )
    how.add_argument(
        "--overlay-only",
        action="store_true",
        help="write those two files (Model Explorer node data) into DIR, open nothing",
    )
    p.add_argument(
        "--port",
        type=int,
        default=8080,
        help="--view: the viewer's port (8080, the default, moves to the next free one)",
    )
    p.add_argument(
        "--no-browser",
        action="store_true",
        help="--view: only print the address (a machine without a browser)",
    )


def _add_fold(sub, quiet) -> None:
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
    f.set_defaults(fn=commands.run_fold)


def _add_export(sub, quiet) -> None:
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
    _add_genai_options(e)
    _add_onnx_options(e)
    e.add_argument("--zeros", **{**ZEROS, "default": None})  # split; round with --adapter
    e.add_argument("--adapters", **ADAPTERS)
    e.add_argument(
        "--adapter",
        metavar="BASE",
        default=None,
        help="write DIR's fine-tune (QA-LoRA, integer zero points) as an adapter of the "
        "onnxruntime-genai folder BASE (written with --adapter-inputs): only its zero points "
        "(and scales), an .onnx_adapter file at --out (folds with --zeros round)",
    )
    e.set_defaults(fn=commands.run_export)


def _add_genai_options(e) -> None:
    """``export --genai`` and what only it reads."""
    e.add_argument(
        "--genai",
        action="store_true",
        help="a decoder with a KV cache in an onnxruntime-genai folder (model.onnx, "
        "genai_config.json, tokenizer files); accuracy level 4 unless given",
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
        "--adapter-inputs",
        choices=ADAPTER_INPUTS,
        default="none",
        help="--genai: a base that adapters swap (export --adapter): each MatMulNBits' zero "
        "points (zeros+scales: and scales) an overridable input; accuracy level 0 (the default "
        "then)",
    )


def _add_onnx_options(e) -> None:
    """How ``export`` writes the file: operators, kernel precision, the vocabulary table, dumps."""
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
        "tied head, which becomes INT4 too); float: as the model holds it (default)",
    )
    e.add_argument(
        "--embedding-group-size",
        type=int,
        default=32,
        metavar="G",
        help="--embeddings int4: columns per scale and zero point (a power of two >= 16; "
        "default 32)",
    )
    e.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="the file's float type: float32 (default) or float16 (half the float bytes)",
    )
    e.add_argument(
        "--dump",
        default=None,
        metavar="DIR",
        help="also write the ONNX stage's numbered dumps there: the graph torch gave, then one per "
        "ONNX pass (text and HTML)",
    )


def _add_generate(sub, quiet) -> None:
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
    g.add_argument(
        "--adapter",
        metavar="FILE",
        default=None,
        help="apply this adapter of the folder (an .onnx_adapter 'export --adapter' wrote)",
    )
    g.set_defaults(fn=commands_genai.run_generate)


def _add_inspect(sub) -> None:
    i = sub.add_parser(
        "inspect",
        help="describe an ONNX file or a compiled directory",
        description="For an .onnx file: ops, bytes by dtype, each layer's lowering, pure int4 or "
        "not; for a folder 'export --genai' wrote, the same of its model.onnx. For a compiled "
        "directory: its model, policy and layer table.",
    )
    i.add_argument("path", metavar="model.onnx|DIR")
    i.add_argument(
        "--verify",
        action="store_true",
        help="first recompute the sha256 recorded when the file (its weights) or the genai folder "
        "(every file) was written, and fail naming a file whose bytes changed",
    )
    i.add_argument(
        "--draw",
        metavar="LAYER",
        default=None,
        help="also draw LAYER (a module path, e.g. model.layers.0.self_attn.q_proj) as an SVG of "
        "its nodes, their tensors' dtypes and shapes",
    )
    i.add_argument(
        "--svg", metavar="FILE", default=None, help="where --draw writes (default: LAYER.svg)"
    )
    i.set_defaults(fn=commands.run_inspect)


def _add_demo(sub) -> None:
    """``demo`` runs the distillation job; ``demo code-search`` the code-search job and ``demo llm``
    the LLM job, each with its own options."""
    from .jobs import code_search, distill, llm

    job = sub.add_parser(
        "demo",
        help="the distillation job on MiniLM (a few minutes on 2 cores); "
        "'demo code-search': MiniLM fine-tuned for code search (about 15 minutes); "
        "'demo llm': a pretrained decoder fine-tuned and deployed to onnxruntime-genai",
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
    decoder = jobs.add_parser(
        "llm",
        help="fine-tune a pretrained decoder on a new domain and measure each route to INT4",
        description=llm.__doc__.split("\n\n")[0].replace("\n", " "),
    )
    llm.add_arguments(decoder)
    job.set_defaults(fn=commands.run_demo, job=None)


def _add_toy(sub) -> None:
    toy = sub.add_parser(
        "toy", help="compile the built-in small GPT with LoRA and print the summary"
    )
    toy.add_argument("--rank", type=int, default=8)
    toy.add_argument("--target", nargs="+", default=["all-linear"], help="module-name patterns")
    toy.add_argument("--dump-dir", default=None, help="write graph dumps here")
    toy.add_argument("--seed", type=int, default=0)
    toy.set_defaults(fn=commands.run_toy)
