"""The LLM job's text: the docstrings and comments of Python modules, split by module.

For each module (its own source, read with ``inspect``): every docstring (module, classes,
functions, in source order) and every comment line, without its ``#``, in the order they appear,
paragraphs apart. A domain a TinyStories model has never seen, held offline by every Python.

Each module's text is tokenized (BOS first, no EOS) and the modules are joined; the stream is cut
into windows of ``seq`` tokens (the last partial one dropped). Training modules give the training
windows, of which a seeded draw of ``val_windows`` is set aside to choose the learning rate;
held-out modules give the evaluation windows (the first ``eval_windows``). The first held-out
window's first ``prompt_tokens`` tokens are the prompt each row continues in the report.
"""

from __future__ import annotations

import ast
import inspect
import io
import platform
import tokenize
from dataclasses import dataclass

import torch

from .code_pairs import DataError, import_module, package_split
from .llm_config import hf_quiet


@dataclass
class Data:
    train: torch.Tensor  # (n, seq) token ids
    val: torch.Tensor  # (v, seq): set aside from the training modules
    eval: torch.Tensor  # (e, seq): held-out modules
    prompt: torch.Tensor  # (1, p): the held-out prompt of the report
    summary: str


def module_text(module) -> str:
    """Docstrings and comments of ``module``'s own source, in order; '' when it has no source."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return ""
    pieces: list[list] = []  # [line, text, last line of a comment run or 0]
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                pieces.append([getattr(node, "lineno", 0), doc, 0])
    comments: list[list] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            text, line = tok.string.lstrip("#").strip(), tok.start[0]
            if comments and comments[-1][2] == line - 1 and text:  # a run of comment lines
                comments[-1][1] += " " + text
                comments[-1][2] = line
            elif len(text.split()) >= 3:  # leave out markers (noqa, type: ignore, ---)
                comments.append([line, text, line])
    except (tokenize.TokenError, SyntaxError):
        pass
    return "\n\n".join(p[1] for p in sorted(pieces + comments, key=lambda p: p[0]))


def token_stream(names: list[str], tokenizer, strict: bool) -> tuple[list[int], list[str]]:
    """The modules' texts as one stream of token ids (BOS before each); the modules skipped."""
    ids, skipped = [], []
    for name in names:
        try:
            text = module_text(import_module(name))
        except DataError:
            if strict:
                raise
            skipped.append(name)
            continue
        if not text:
            if strict:
                raise DataError(
                    f"module {name!r} has no docstring or comment to read (no Python source?); "
                    "leave it out, or name modules written in Python (e.g. textwrap, difflib)"
                )
            skipped.append(name)
            continue
        with hf_quiet():  # the stream is longer than the model's context: windows are cut below
            ids += [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids, skipped


def windows(ids: list[int], seq: int) -> torch.Tensor:
    n = len(ids) // seq
    return torch.tensor(ids[: n * seq], dtype=torch.long).reshape(n, seq)


def load_data(cfg, tokenizer) -> Data:
    """The windows the settings ask for; too little text is an error naming the modules."""
    if cfg.package:
        train_modules, eval_modules = package_split(cfg.package)
    else:
        train_modules, eval_modules = list(cfg.train_modules), list(cfg.eval_modules)
    both = sorted(set(train_modules) & set(eval_modules))
    if both:
        raise DataError(
            f"module(s) {', '.join(both)} are both training and held-out modules: the split is by "
            "module, so name each on one side only"
        )
    strict = not cfg.package
    train_ids, skipped = token_stream(train_modules, tokenizer, strict)
    eval_ids, skipped_eval = token_stream(eval_modules, tokenizer, strict)
    train, held = windows(train_ids, cfg.seq), windows(eval_ids, cfg.seq)
    val_n = cfg.val_windows if len(cfg.lrs) > 1 else 0
    if len(train) < cfg.batch + val_n:
        raise DataError(
            f"the training modules ({', '.join(train_modules[:6])}"
            f"{', ...' if len(train_modules) > 6 else ''}) give {len(train)} windows of "
            f"{cfg.seq} tokens; the job needs at least {cfg.batch + val_n} (a batch"
            f"{f' and {val_n} to choose the learning rate' if val_n else ''}): name more modules"
        )
    if len(held) < 2:
        raise DataError(
            f"the held-out modules ({', '.join(eval_modules)}) give {len(held)} windows of "
            f"{cfg.seq} tokens; perplexity needs at least 2: name more or larger modules"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
    val = train[order[:val_n].sort().values]
    train = train[order[val_n:].sort().values]
    evaluated = held[: cfg.eval_windows]
    summary = (
        f"text (Python {platform.python_version()} docstrings and comments): {len(train)} "
        f"training windows of {cfg.seq} tokens from {len(train_modules) - len(skipped)} modules "
        f"(+{len(val)} set aside to choose the learning rate), {len(evaluated)} held-out windows "
        f"from {len(eval_modules) - len(skipped_eval)} other modules"
        + (
            f"; {len(skipped) + len(skipped_eval)} modules skipped"
            if skipped or skipped_eval
            else ""
        )
    )
    return Data(train, val, evaluated, held[:1, : cfg.prompt_tokens], summary)
