"""The decoder commands: ``export --genai`` (a KV-cache decoder in an onnxruntime-genai folder)
and ``generate`` (the token loop over such a folder, streaming what it decodes).

Apart from ``commands`` because both are about one kind of artefact, the folder, and only they
need a tokenizer: ``export --genai`` copies one into the folder, ``generate`` reads it back.
"""

from __future__ import annotations

from pathlib import Path

from ..runtime.errors import LowRankError
from .commands import note, say


def export_genai_folder(args, compiled: bool) -> int:
    """DIR (a compiled or folded directory, or an HF model directory) as an onnxruntime-genai
    folder."""
    from ..genai import export_genai
    from ..runtime.progress import Steps

    level = args.accuracy_level
    if level is None:  # int8 activations, unless adapters swap the base (level 4 would ignore them)
        level = 4 if args.adapter_inputs == "none" else 0
    with Steps("export") as steps:
        model, source = _decoder(args, compiled, steps)
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
            dtype=args.dtype,
            adapter_inputs=args.adapter_inputs,
            dump_dir=args.dump,
        )
    say(
        args,
        f"onnxruntime-genai folder written to {out}"
        + ("" if tokenizer else " (no tokenizer files: generate with --ids)"),
    )
    return 0


def export_adapter_file(args) -> int:
    """DIR (a compiled directory, fine-tuned over BASE's weights) as an adapter of BASE."""
    from ..genai_adapters import export_adapter
    from ..runtime.progress import Steps

    with Steps("export") as steps:
        model, _ = _decoder(args, True, steps)
        steps.start("compare with the base")
        out = export_adapter(model, args.adapter, args.out)
    size = out.stat().st_size
    say(args, f"adapter of {args.adapter} written to {out} ({size / 2**10:.1f} KiB)")
    return 0


def _decoder(args, compiled: bool, steps):
    """The model to export (adapters folded) and the directory its tokenizer may sit in."""
    from ..runtime.layers.protocol import AdapterLayer
    from .compiled_dir import fold_compiled, load
    from .model_spec import load_model, parse_model_spec

    if not compiled:
        steps.start("load")
        return load_model(parse_model_spec(args.dir)).model, args.dir
    c = load(args.dir, adapters=args.adapters, on_step=steps.start)
    model, source = c.model, c.spec.path or c.spec.spec
    if any(isinstance(m, AdapterLayer) for m in model.modules()):
        note(args, f"{args.dir} holds unfolded adapters: folding them first (zeros={args.zeros})")
        steps.start("fold")
        model = fold_compiled(c, args.zeros).model
    return model, source


def run_generate(args) -> int:
    from ..runtime.serve.load import load

    prompt, tokenizer = _prompt(args)
    stream = _streamer(tokenizer)
    session = load(args.dir)
    adapter = None if args.adapter is None else session.load_adapter(args.adapter)
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
        adapter=adapter,
    )
    print()
    return 0


def _prompt(args) -> tuple[list[int], object]:
    """The prompt's token ids, and the tokenizer that made them (None for --ids)."""
    if args.ids is None:
        tokenizer = _folder_tokenizer(args.dir)
        return tokenizer(args.prompt)["input_ids"], tokenizer
    try:
        prompt = [int(x) for x in args.ids.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"--ids must be token ids separated by commas, e.g. 1,2,3; got {args.ids!r}"
        ) from None
    if not prompt:
        raise ValueError("--ids names no token")
    return prompt, None


def _streamer(tokenizer):
    """Prints each step's new token as it comes: its text, or its id (comma-separated) when
    there is no tokenizer."""
    new: list[int] = []
    shown = [""]

    def stream(tokens) -> None:  # one step's tokens, batch 1
        new.append(int(tokens[0]))
        if tokenizer is None:
            print(("" if len(new) == 1 else ",") + str(new[-1]), end="", flush=True)
            return
        # decode the whole, then print the new suffix: no character split across tokens
        text = tokenizer.decode(new, skip_special_tokens=True)
        print(text[len(shown[0]) :], end="", flush=True)
        shown[0] = text

    return stream


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
