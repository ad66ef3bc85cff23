"""Query/code pairs from installed Python modules, built at run time with ``inspect``.

For every function and method a module defines (its own, not imported ones) whose source
``inspect`` can read: query = the first sentence of its docstring, document = its source
with the docstring cut out. A pair is dropped when the query has fewer than three words,
when the body is empty without the docstring (only ``pass`` or ``...``), or when its query
or document repeats an earlier pair's (a repeated query would be a false negative among
the in-batch negatives). Modules and members are visited in sorted order, so the pairs
(and their counts) are the same on every run of a given Python.

Everything here is standard library but the error type.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap
from dataclasses import dataclass

from ...runtime.errors import LowRankError

MIN_QUERY_WORDS = 3
ABBREVIATIONS = ("e.g", "i.e", "etc", "vs", "cf", "approx")
SIGNATURE = re.compile(r"[\w.]+\(.*\)( ?-> ?.+)?")
HOLD_OUT_EVERY = 8  # --package: every 8th module (sorted by name) is held out


class DataError(LowRankError, ValueError):
    """A module or package gives no usable pairs (the message names it and what would work)."""


@dataclass(frozen=True)
class Pair:
    query: str  # the docstring's first sentence
    doc: str  # the source, docstring removed
    where: str  # module:qualname


def first_sentence(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph (all of it when no sentence ends);
    a first paragraph that is only a signature, ``wrap(text : string) -> [string]``, is skipped."""
    paragraphs = inspect.cleandoc(docstring).split("\n\n")
    if len(paragraphs) > 1 and SIGNATURE.fullmatch(" ".join(paragraphs[0].split())):
        paragraphs = paragraphs[1:]
    text = " ".join(paragraphs[0].split())
    for m in re.finditer(r"[.!?](?=\s|$)", text):
        if not text[: m.start()].lower().endswith(ABBREVIATIONS):
            return text[: m.end()]
    return text


def strip_docstring(source: str) -> str | None:
    """The source of one function without its docstring, or None when nothing else is left
    (or the source does not parse on its own, e.g. a lambda)."""
    source = textwrap.dedent(source)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    body = node.body
    first = body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        body = body[1:]
        lines = source.splitlines(keepends=True)
        start, end = first.lineno - 1, first.end_lineno - 1
        # ast's offsets count UTF-8 bytes, not characters
        rest = (
            lines[start].encode()[: first.col_offset] + lines[end].encode()[first.end_col_offset :]
        ).decode()
        source = "".join(lines[:start] + ([rest] if rest.strip() else []) + lines[end + 1 :])
    trivial = all(
        isinstance(s, ast.Pass)
        or (
            isinstance(s, ast.Expr)
            and isinstance(s.value, ast.Constant)
            and s.value.value is Ellipsis
        )
        for s in body
    )
    return None if trivial else source


def functions(module) -> list[tuple[str, object]]:
    """(qualified name, function) for the functions and methods ``module`` itself defines,
    sorted by name; aliases of one function are listed once."""
    out, seen = [], set()

    def add(obj):
        obj = getattr(obj, "__func__", obj)  # staticmethod, classmethod
        if inspect.isfunction(obj) and obj.__module__ == module.__name__ and id(obj) not in seen:
            seen.add(id(obj))
            out.append((obj.__qualname__, obj))

    for _, obj in sorted(vars(module).items()):
        add(obj)
        if inspect.isclass(obj) and obj.__module__ == module.__name__:
            for _, member in sorted(vars(obj).items()):
                add(member.fget if isinstance(member, property) else member)
    return sorted(out, key=lambda item: item[0])


def module_pairs(module) -> list[Pair]:
    """Every (query, document) pair of one module, before removing repeats."""
    pairs = []
    for qualname, fn in functions(module):
        if not isinstance(fn.__doc__, str):
            continue
        query = first_sentence(fn.__doc__)
        if len(query.split()) < MIN_QUERY_WORDS:
            continue
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):  # no source file (frozen, C), or not a plain function
            continue
        doc = strip_docstring(source)
        if doc is not None:
            pairs.append(Pair(query, doc, f"{module.__name__}:{qualname}"))
    return pairs


def import_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise DataError(
            f"no module {name!r} can be imported ({e}); name an installed module, as `import` "
            "spells "
            f"it (e.g. json.decoder), or a package with --package"
        ) from None


def pairs_of(names: list[str], seen: set[str], strict: bool = True) -> tuple[list[Pair], list[str]]:
    """The pairs of modules ``names`` whose query and document are not in ``seen`` (which
    grows), and the modules skipped. ``strict``: a module that cannot be imported or gives no
    pair is an error naming it; otherwise it is skipped (a package's modules)."""
    out, skipped = [], []
    for name in names:
        try:
            module = import_module(name)
        except DataError:
            if strict:
                raise
            skipped.append(name)
            continue
        pairs, kept = module_pairs(module), []
        for pair in pairs:
            key_q, key_d = "q:" + pair.query.lower(), "d:" + pair.doc
            if key_q not in seen and key_d not in seen:
                seen.update((key_q, key_d))
                kept.append(pair)
        if not pairs and strict:
            raise DataError(
                f"module {name!r} gives no query/code pair: none of its own functions has both a "
                f"docstring whose first sentence has {MIN_QUERY_WORDS}+ words and readable Python "
                f"source; leave it out, or name modules whose functions have docstrings "
                f"(e.g. textwrap, difflib)"
            )
        skipped += [] if kept else [name]
        out += kept
    return out, skipped


def build(
    train: list[str], held_out: list[str], strict: bool = True
) -> tuple[list[Pair], list[Pair], list[str]]:
    """(training pairs, held-out pairs, modules skipped): held-out pairs repeat no training
    query or document."""
    both = sorted(set(train) & set(held_out))
    if both:
        raise DataError(
            f"module(s) {', '.join(both)} are both training and held-out modules: the split is by "
            f"module, so name each on one side only"
        )
    seen: set[str] = set()
    train_pairs, skipped = pairs_of(train, seen, strict)
    eval_pairs, skipped_eval = pairs_of(held_out, seen, strict)
    return train_pairs, eval_pairs, skipped + skipped_eval


def package_split(package: str) -> tuple[list[str], list[str]]:
    """The modules of an installed package (sorted by name; test modules left out), split into
    (train, held out): every ``HOLD_OUT_EVERY``-th module is held out, at least one."""
    pkg = import_module(package)
    if not hasattr(pkg, "__path__"):
        raise DataError(
            f"{package!r} is a module, not a package: pass --train-modules and --eval-modules "
            f"(its functions are too few to split by module)"
        )
    names = [pkg.__name__] + [
        m.name
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".", onerror=lambda _: None)
    ]
    names = sorted(
        n
        for n in names
        if not any(part in ("test", "tests") or part.startswith("test_") for part in n.split("."))
    )
    if len(names) < 2:
        raise DataError(
            f"package {package!r} has {len(names)} module(s): a split by module needs two or more; "
            f"pass --train-modules and --eval-modules"
        )
    held = names[HOLD_OUT_EVERY - 1 :: HOLD_OUT_EVERY] or names[-1:]
    return [n for n in names if n not in held], held
