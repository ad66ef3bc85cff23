"""What each command does, given its parsed arguments: compile, dump, fold, export (ONNX),
inspect, demo, toy, passes. ``commands_genai`` holds ``export --genai`` and ``generate``.

Every handler takes the ``argparse`` namespace ``cli_parser`` built and returns the exit
status; errors are raised (``cli.main`` prints them on one line). The library and the heavy
modules are imported inside the handlers, so that ``--help`` and a bad option stay quick.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..runtime.errors import LowRankError


def say(args, text) -> None:
    if not args.quiet:
        print(text)


def note(args, text: str) -> None:
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
            "calibration batches; the command line has none to give: compile in Python, "
            "compile(model, policy, calibration=[...]), or use quantizer='rtn'"
        )
    return policy, parse_model_spec(args.model)


def run_compile(args) -> int:
    from ..runtime.files import staged_dir
    from ..runtime.progress import Steps
    from ..summary import summary
    from .compiled_dir import DUMPS, RECORD, build, save

    policy, spec = _inputs(args)
    with staged_dir(args.out, RECORD) as tmp, Steps("compile") as steps:
        c = build(spec, policy, dump_dir=tmp / DUMPS if args.dump else None, on_step=steps.start)
        steps.start("save")
        save(c, tmp)
    say(args, summary(c.model))
    say(
        args,
        f"compiled model written to {args.out}"
        + (f" (graph dumps in {DUMPS}/)" if args.dump else ""),
    )
    return 0


def run_dump(args) -> int:
    from ..dump_explorer import program, require_viewer, view, write_overlays
    from ..runtime.files import staged_dir
    from ..runtime.progress import Steps
    from .compiled_dir import build

    policy, spec = _inputs(args)
    if args.view:
        require_viewer()  # before the model is built: a missing package fails at once
    with staged_dir(args.out, marker="pipeline.txt") as tmp, Steps("dump") as steps:
        c = build(spec, policy, dump_dir=tmp, on_step=steps.start)
        if args.view or args.overlay_only:
            steps.start("overlay")
            shown = program(c.model, c.example_inputs, c.example_kwargs)
            write_overlays(tmp, shown)
        names = sorted(p.name for p in tmp.iterdir())
    say(args, f"graph dumps written to {args.out}: {', '.join(names)}")
    if args.view:
        view(shown, args.out, port=args.port, open_browser=not args.no_browser)
    return 0


def run_fold(args) -> int:
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
    say(args, summary(f.model))
    say(args, f"folded model (zeros={args.zeros}) written to {args.out}")
    return 0


def _check_onnx_out(args) -> Path:
    """--out names a file in a directory that exists; checked before any model is loaded."""
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
    return out


def run_export(args) -> int:
    from ..export import export_onnx, inspect_onnx
    from ..runtime.layers.protocol import AdapterLayer
    from ..runtime.progress import Steps
    from .compiled_dir import RECORD, fold_compiled, load

    args.zeros = args.zeros or ("round" if args.adapter else "split")
    if args.adapter:
        from .commands_genai import export_adapter_file

        return export_adapter_file(args)
    if args.genai:
        from .commands_genai import export_genai_folder

        return export_genai_folder(args, compiled=(Path(args.dir) / RECORD).is_file())
    out = _check_onnx_out(args)
    with Steps("export") as steps:
        c = load(args.dir, adapters=args.adapters, on_step=steps.start)
        if c.example_inputs is None and not c.example_kwargs:
            raise LowRankError(
                f"MODEL {c.spec.spec!r} came without example inputs, and export runs the model "
                f"once: make {c.spec.factory or 'the factory'}() return (module, example_inputs)"
            )
        if any(isinstance(m, AdapterLayer) for m in c.model.modules()):
            note(
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
            dtype=args.dtype,
            dump_dir=args.dump,
        )
    say(args, inspect_onnx(path))
    return 0


def run_inspect(args) -> int:
    from ..export import inspect_onnx
    from ..genai_config import MODEL_FILE
    from ..runtime.quant.formats import FOLDER_RECORD
    from ..runtime.serve.load import check_integrity

    path = Path(args.path)
    genai = path.is_dir() and (path / FOLDER_RECORD).is_file()
    if path.is_dir() and not genai:
        if args.verify:
            raise LowRankError(
                f"--verify checks an .onnx file or a folder 'export --genai' wrote; {args.path!r} "
                "is neither"
            )
        return _inspect_dir(path, args)
    if not path.exists():
        raise LowRankError(
            f"no file or directory {args.path!r}: inspect takes an .onnx file, a genai folder or "
            "a compiled directory"
        )
    if args.verify:
        checked = check_integrity(path)
        print(
            f"verified: {len(checked)} file(s) match their recorded sha256 ({', '.join(checked)})"
        )
    onnx_path = path / MODEL_FILE if genai else path
    try:
        report = inspect_onnx(onnx_path)
    except Exception as e:
        raise LowRankError(
            f"{str(onnx_path)!r} is not a readable ONNX file ({type(e).__name__}); inspect takes "
            "an "
            f".onnx file, a genai folder or a compiled directory"
        ) from None
    print(report)
    _draw(onnx_path, args)
    return 0


def _draw(source, args) -> None:
    """``inspect --draw LAYER``: the layer's SVG (``layer_svg``), written to ``--svg``."""
    if args.draw is None:
        return
    from ..dump_draw import layer_svg
    from ..runtime.files import write_atomic

    out = Path(args.svg or f"{args.draw}.svg")
    write_atomic(out, layer_svg(source, args.draw) + "\n")
    print(f"{args.draw} drawn to {out}")


def _inspect_dir(path: Path, args) -> int:
    """A compiled or folded directory: its stage, model, policy and layer table."""
    import json

    from ..summary import summary
    from .compiled_dir import load

    c = load(path)
    zeros = f", zeros={c.record['zeros']}" if c.record.get("zeros") else ""
    print(f"directory: {path} ({c.stage}{zeros})")
    print(f"model: {c.spec.spec} ({c.spec.kind}{', ' + c.spec.path if c.spec.path else ''})")
    print(f"policy: {json.dumps(c.policy.to_dict())}")
    print(summary(c.model))
    _draw(c.model, args)
    return 0


def run_demo(args) -> int:
    if args.job == "llm":
        from .jobs import llm

        llm.run(llm.config_from_args(args))
        print(
            f"written to {args.out}: results.md, results.json, perplexity.png (with matplotlib), "
            "best/ (the best INT4 row's onnxruntime-genai folder), folders/, adapters/"
        )
        return 0
    if args.job == "code-search":
        from .jobs import code_search

        code_search.run(code_search.config_from_args(args))
        print(
            f"written to {args.out}: results.md, recall.png (with matplotlib), the ONNX file of "
            "every deployed row"
        )
        return 0
    from .jobs import distill

    distill.run(distill.config_from_args(args))
    print(
        f"written to {args.out}: {args.methods[0]}_int4.onnx (the deployable model), the "
        "baselines' files, adapters/, dumps/, results.md"
    )
    return 0


def run_toy(args) -> int:
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


def run_passes(args) -> int:
    from ..passes import registered_passes

    for name, info in sorted(registered_passes().items()):
        opts = ", ".join(f"{k}={v!r}" for k, v in info.options.items())
        print(f"{name:16s} {info.summary}\n{'':16s} options: {opts or '-'}")
    return 0
