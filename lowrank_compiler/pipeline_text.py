"""Pipelines as text: ``find-linears{target=[all-linear]},insert-lora{rank=16,alpha=32.0}``.

A pipeline is a list of ``PassSpec(name, options)`` and prints as a string that parses
back to the same pipeline (MLIR's textual pass pipelines). Option values follow this
grammar (whitespace between tokens is ignored)::

    value  := scalar | "[" [value ("," value)*] "]" | "{" [key "=" value ("," key "=" value)*] "}"
    key    := bare | quoted
    scalar := quoted | bare       bare = run of characters other than , { } [ ] = " and space
                                  true/false/none, integers and finite floats parse as such;
                                  any other bare word is a string
    quoted := a JSON string literal (for regexes and anything with special characters)

``format_value`` is the inverse: ``parse_value(format_value(v)) == v`` for None, bools,
ints, finite floats, strings, lists/tuples (parsed back as lists) and str-keyed dicts.

Only text and the registry's names live here: building a ``Policy`` and its pipeline
imports no pass manager, exporter or onnxruntime (the registry loads the passes the first
time a name is looked up).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import PipelineError
from .passes import get_pass

_SPECIAL = set(',{}[]=" \t\n')
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")  # finite only: no inf, nan
_WORDS = {"true": True, "false": False, "none": None}


def _bare_value(word: str):
    if word in _WORDS:
        return _WORDS[word]
    if _INT.match(word):
        return int(word)
    if _FLOAT.match(word):
        return float(word)
    return word


def format_value(value) -> str:
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PipelineError(f"option value {value!r} is not finite")
        return repr(float(value))  # also for numpy floats, whose repr names their type
    if isinstance(value, str):
        bare = (
            value
            and not (_SPECIAL & set(value))
            and _bare_value(value) == value
            and value.isprintable()
        )
        return value if bare else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(f"{format_value(str(k))}={format_value(v)}" for k, v in value.items())
            + "}"
        )
    raise PipelineError(
        f"option value {value!r} of type {type(value).__name__} has no textual form"
    )


class Reader:
    """A cursor over pipeline text."""

    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def error(self, what: str) -> PipelineError:
        return PipelineError(f"{what} at character {self.pos} of {self.text!r}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.error(f"expected {ch!r}")
        self.pos += 1

    def word(self) -> str:
        self.skip_ws()
        if self.peek() == '"':
            try:
                value, end = json.JSONDecoder().raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                raise self.error("unterminated or malformed quoted string") from None
            self.pos = end
            return value
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _SPECIAL:
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a name or value")
        return self.text[start : self.pos]

    def value(self):
        ch = self.peek()
        if ch == "[":
            self.pos += 1
            items = []
            if self.peek() == "]":
                self.pos += 1
                return items
            while True:
                items.append(self.value())
                if self.peek() == ",":
                    self.pos += 1
                    continue
                self.expect("]")
                return items
        if ch == "{":
            return self.mapping()
        if ch == '"':
            return self.word()
        return _bare_value(self.word())

    def mapping(self) -> dict:
        self.expect("{")
        out: dict = {}
        if self.peek() == "}":
            self.pos += 1
            return out
        while True:
            key = self.word()
            if key in out:
                raise self.error(f"option {key!r} given twice")
            self.expect("=")
            out[key] = self.value()
            if self.peek() == ",":
                self.pos += 1
                continue
            self.expect("}")
            return out


def parse_value(text: str):
    r = Reader(text)
    v = r.value()
    if r.peek():
        raise r.error("unexpected text after the value")
    return v


@dataclass(frozen=True)
class PassSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # options is a dict: hash what equality compares, order-free
        return hash((self.name, frozenset((k, format_value(v)) for k, v in self.options.items())))

    def __str__(self) -> str:
        if not self.options:
            return self.name
        body = ",".join(f"{k}={format_value(v)}" for k, v in self.options.items())
        return f"{self.name}{{{body}}}"

    def validate(self) -> None:
        try:
            info = get_pass(self.name)
        except KeyError as e:
            raise PipelineError(str(e.args[0])) from None
        unknown = set(self.options) - set(info.options)
        if unknown:
            raise PipelineError(
                f"pass {self.name!r} has no option(s) {sorted(unknown)}; its options are "
                f"{sorted(info.options)}"
            )


@dataclass(frozen=True)
class Pipeline:
    passes: tuple[PassSpec, ...]

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        """Build a pipeline from its textual form; unknown passes or options are errors."""
        if not isinstance(text, str) or not text.strip():
            raise PipelineError(
                "a pipeline string names at least one pass, e.g. 'find-linears,insert-lora{rank=8}'"
            )
        r = Reader(text)
        specs = []
        while True:
            name = r.word()
            options = r.mapping() if r.peek() == "{" else {}
            specs.append(PassSpec(name, options))
            if not r.peek():
                break
            r.expect(",")
        pipeline = cls(tuple(specs))
        pipeline.validate()
        return pipeline

    def validate(self) -> None:
        for spec in self.passes:
            spec.validate()
