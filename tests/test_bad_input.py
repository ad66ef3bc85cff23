"""Bad input to every public entry point: a clear error, no partial file, the input model unchanged.

Each row of ``CASES`` is a ``Case(id, call, error, words, model=..., setup=..., keeps=...)``:
``call(model, ctx)`` gets a fresh model from the ``model`` factory (or None) and a context
(``ctx.out``: an empty directory to write into; ``ctx.inp``: a directory of input files;
``ctx.good``: a valid exported ONNX file; ``ctx.monkeypatch``). For every row the test checks

- the error has the expected type (always a project error, ValueError or TypeError) and its
  message holds every key word (case-insensitive);
- no file under the test's directory appeared, vanished or changed, except the complete
  dumps a row lists in ``keeps`` (the passes that ran before the failure);
- the model is as it was: the same module objects under the same names, every state
  tensor byte for byte, every ``requires_grad`` and ``training`` flag, no compile record.

A new entry point gets rows appended to ``CASES``; CLI commands go through ``cli(...)``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch
from models import NoLinear, external_data_onnx
from torch import nn

import lowrank_compiler as lrc
from lowrank_compiler.app.cli import main
from lowrank_compiler.runtime.errors import ExportError
from lowrank_compiler.runtime.onnx import export as onnx_export


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Any, SimpleNamespace], object]
    error: type[BaseException]
    words: tuple[str, ...]
    model: Callable[[], nn.Module] | None = None
    setup: Callable[[SimpleNamespace], None] | None = None
    keeps: tuple[str, ...] = ()  # files under ctx.out a failure may leave (relative paths)


class CliFailed(Exception):
    """A CLI command exited non-zero; the message is the exit code and what it printed on stderr."""


def cli(*argv: str) -> Callable:
    """A call running ``lowrank-compiler argv`` ({out}, {inp} are filled in); raises CliFailed on
    exit != 0."""

    def call(model, ctx):
        err = io.StringIO()
        args = [a.format(out=ctx.out, inp=ctx.inp) for a in argv]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(args)
            except SystemExit as e:  # argparse's own errors
                code = e.code
        if code != 0:
            raise CliFailed(f"exit {code}: {err.getvalue()}")

    return call


# --- models (each factory builds a fresh one) ------------------------------------------


def mlp(k: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(k, 32), nn.ReLU(), nn.Linear(32, 16))


def poisoned(value: float) -> Callable[[], nn.Module]:
    def build():
        model = mlp()
        with torch.no_grad():
            model[2].weight[3, 5] = value
        return model

    return build


TARGETS = ["0", "2"]


def qalora() -> nn.Module:
    model = lrc.compile(mlp(), lrc.Policy(method="qalora", target=TARGETS, group_size=16, rank=2))
    with torch.no_grad():
        model[0].lora_B.normal_()
    return model


def lrqat(bits: int = 4, nan: str | None = None, **policy) -> Callable[[], nn.Module]:
    """An LR-QAT model; ``nan``: the parameter of layer 2 that a diverged run left NaN in."""

    def build():
        model = lrc.compile(
            mlp(),
            lrc.Policy(method="lrqat", target=TARGETS, bits=bits, group_size=16, rank=2, **policy),
        )
        if nan:
            with torch.no_grad():
                getattr(model[2], nan)[0, 0] = float("nan")
        return model

    return build


def rtn(bits: int = 4) -> Callable[[], nn.Module]:
    return lambda: lrc.compile(
        mlp(), lrc.Policy(method="rtn", target=TARGETS, bits=bits, group_size=16)
    )


def folded() -> nn.Module:
    return lrc.fold(qalora())


def diverged() -> nn.Module:
    model = qalora()
    with torch.no_grad():
        model[2].lora_A[0, 0] = float("nan")
    return model


X = (torch.randn(2, 32),)


def export(**kw) -> Callable:
    def call(model, ctx):
        args = {"example_inputs": X, **kw}
        path = args.pop("path", ctx.out / "m.onnx")
        return lrc.export_onnx(model, path, **args)

    return call


# --- files ------------------------------------------------------------------------------


def corrupt(data: bytes) -> bytes:
    out = bytearray(data)
    for i in range(64, len(out), 97):
        out[i] ^= 0xFF
    return bytes(out)


def onnx_file(
    make: Callable[[SimpleNamespace], bytes], *, secret: bool = False, link: bool = False
):
    """Setup writing ``ctx.inp/m.onnx`` (and a secret file outside ``inp``, a symlink to it)."""

    def setup(ctx):
        if secret or link:
            (ctx.inp.parent / "secret").write_bytes(b"\0" * 64)
        if link:
            (ctx.inp / "w.data").symlink_to(ctx.inp.parent / "secret")
        (ctx.inp / "m.onnx").write_bytes(make(ctx))

    return setup


ONNX_FILES = [  # (id, setup, words)
    ("missing", None, ("no onnx file at",)),
    ("empty", onnx_file(lambda ctx: b""), ("holds no onnx graph",)),
    ("text", onnx_file(lambda ctx: b"not a model at all\n" * 10), ("not a readable onnx model",)),
    (
        "truncated-half",
        onnx_file(lambda ctx: ctx.good.read_bytes()[: ctx.good.stat().st_size // 2]),
        ("not a readable onnx model", "truncated"),
    ),
    (
        "truncated-10-bytes",
        onnx_file(lambda ctx: ctx.good.read_bytes()[:10]),
        ("not a readable onnx model",),
    ),
    (
        "corrupted",
        onnx_file(lambda ctx: corrupt(ctx.good.read_bytes())),
        ("not a readable onnx model",),
    ),
    (
        "external-parent",
        onnx_file(lambda ctx: external_data_onnx("../secret"), secret=True),
        ("'../secret'", "outside the model's directory"),
    ),
    (
        "external-absolute",
        onnx_file(lambda ctx: external_data_onnx(str(ctx.inp.parent / "secret")), secret=True),
        ("secret'", "outside the model's directory"),
    ),
    (
        "external-climbs-out",
        onnx_file(lambda ctx: external_data_onnx("sub/../../secret"), secret=True),
        ("outside the model's directory",),
    ),
    (
        "external-symlink-out",
        onnx_file(lambda ctx: external_data_onnx("w.data"), link=True),
        ("'w.data'", "outside the model's directory"),
    ),
]


def inspect(model, ctx):
    return lrc.inspect_onnx(ctx.inp / "m.onnx")


def load(model, ctx):
    return lrc.runtime.load(ctx.inp / "m.onnx")


def session_call(*args, **kwargs) -> Callable:
    return lambda model, ctx: lrc.runtime.load(ctx.good)(*args, **kwargs)


def enospc_midway(external: bool = False) -> Callable:
    """Setup: the ONNX writer fills half its file (or the external data), then the disk is full."""

    def setup(ctx):
        def save(proto, f, **kw):
            assert kw["save_as_external_data"] is external
            target = Path(f).with_name(kw["location"]) if external else Path(f)
            data = proto.SerializeToString()
            target.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        ctx.monkeypatch.setattr(onnx_export.onnx, "save_model", save)
        if external:
            ctx.monkeypatch.setattr(
                onnx_export, "_TWO_GB", 0
            )  # as if the model were past protobuf's limit

    return setup


def denied_at_rename(ctx):
    real = os.replace

    def replace(src, dst, *a, **kw):
        if str(dst).endswith(".onnx"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(src, dst, *a, **kw)

    ctx.monkeypatch.setattr(onnx_export.os, "replace", replace)


def earlier_file_then_enospc(ctx):
    """A good m.onnx from an earlier export is there: a failed export must leave it as it was."""
    (ctx.out / "m.onnx").write_bytes(ctx.good.read_bytes())
    enospc_midway()(ctx)


def a_file(name: str) -> Callable:
    def setup(ctx):
        (ctx.out / name).write_text("x")

    return setup


P = lrc.Policy
QALORA = dict(method="qalora", target=TARGETS, group_size=16, rank=2)
LRQAT = dict(method="lrqat", target=TARGETS, group_size=16, rank=2)

CASES = [
    # --- Policy ------------------------------------------------------------------------
    Case(
        "policy-bits-5", lambda m, c: P(bits=5), lrc.PolicyError, ("bits must be one of", "got 5")
    ),
    Case("policy-bits-str", lambda m, c: P(bits="4"), lrc.PolicyError, ("bits", "'4'")),
    Case(
        "policy-group-8",
        lambda m, c: P(group_size=8),
        lrc.PolicyError,
        ("group_size", ">= 16", "got 8"),
    ),
    Case(
        "policy-group-48",
        lambda m, c: P(group_size=48),
        lrc.PolicyError,
        ("group_size", "power of two", "48"),
    ),
    Case(
        "policy-rank-0",
        lambda m, c: P(rank=0),
        lrc.PolicyError,
        ("rank must be an integer >= 1", "got 0"),
    ),
    Case("policy-rank-float", lambda m, c: P(rank=2.5), lrc.PolicyError, ("rank", "2.5")),
    Case(
        "policy-alpha-nan",
        lambda m, c: P(alpha=float("nan")),
        lrc.PolicyError,
        ("alpha", "positive finite"),
    ),
    Case("policy-dropout-1", lambda m, c: P(dropout=1.0), lrc.PolicyError, ("dropout", "[0, 1)")),
    Case(
        "policy-method",
        lambda m, c: P(method="gptq"),
        lrc.PolicyError,
        ("method must be one of", "'gptq'"),
    ),
    Case(
        "policy-target-int",
        lambda m, c: P(target=3),
        lrc.PolicyError,
        ("target must be a pattern", "3"),
    ),
    Case(
        "policy-target-empty",
        lambda m, c: P(target=[]),
        lrc.PolicyError,
        ("target must name at least one",),
    ),
    Case(
        "policy-bad-regex",
        lambda m, c: P(target="re:(("),
        lrc.PolicyError,
        ("not a valid regular expression",),
    ),
    Case(
        "policy-override-field",
        lambda m, c: P(overrides={"q": {"ranks": 2}}),
        lrc.PolicyError,
        ("unknown field", "ranks"),
    ),
    Case(
        "policy-override-rank-0",
        lambda m, c: P(overrides={"q": {"rank": 0}}),
        lrc.PolicyError,
        ("overrides['q'].rank", "got 0"),
    ),
    Case(
        "policy-train-scales-lora",
        lambda m, c: P(train_scales=True),
        lrc.PolicyError,
        (
            "train_scales=true applies to method 'qalora' and 'lrqat'",
            "method 'lora' has no scales",
            "train_scales=false",
        ),
    ),
    Case(
        "policy-train-scales-int",
        lambda m, c: P(method="lrqat", train_scales=1),
        lrc.PolicyError,
        ("train_scales must be true or false", "got 1"),
    ),
    Case(
        "policy-lrqat-dropout",
        lambda m, c: P(method="lrqat", dropout=0.1),
        lrc.PolicyError,
        ("dropout=0.1", "'lrqat'", "use dropout=0"),
    ),
    Case(
        "policy-from-dict-unknown",
        lambda m, c: P.from_dict({"rnak": 2}),
        lrc.PolicyError,
        ("unknown policy field", "rnak"),
    ),
    Case(
        "policy-from-file-missing",
        lambda m, c: P.from_file(c.inp / "p.json"),
        lrc.PolicyError,
        ("cannot read policy file", "p.json"),
    ),
    Case(
        "policy-from-file-bad-json",
        lambda m, c: P.from_file(c.inp / "p.json"),
        lrc.PolicyError,
        ("not valid json",),
        setup=lambda c: (c.inp / "p.json").write_text("{rank: 2"),
    ),
    Case(
        "policy-from-file-suffix",
        lambda m, c: P.from_file(c.inp / "p.yaml"),
        lrc.PolicyError,
        ("must end in .json or .toml",),
        setup=lambda c: (c.inp / "p.yaml").write_text("rank: 2"),
    ),
    # --- compile -----------------------------------------------------------------------
    Case(
        "compile-not-a-module",
        lambda m, c: lrc.compile("model", P()),
        TypeError,
        ("compile expects a torch.nn.Module", "str"),
    ),
    Case(
        "compile-policy-int",
        lambda m, c: lrc.compile(m, 3),
        lrc.PolicyError,
        ("policy must be", "int"),
        mlp,
    ),
    Case(
        "compile-empty-model",
        lambda m, c: lrc.compile(m, P()),
        lrc.TargetError,
        ("no linear layers",),
        nn.Sequential,
    ),
    Case(
        "compile-no-linear",
        lambda m, c: lrc.compile(m, P(method="qalora")),
        lrc.TargetError,
        ("no linear layers",),
        NoLinear,
    ),
    Case(
        "compile-bare-linear",
        lambda m, c: lrc.compile(m, P()),
        lrc.TraceError,
        ("bare linear", "sequential"),
        lambda: nn.Linear(32, 32),
    ),
    Case(
        "compile-group-not-a-power-of-two",
        lambda m, c: lrc.compile(m, pipeline="find-linears,insert-qalora{rank=2,group_size=48}"),
        lrc.PolicyError,
        ("0: group_size=48 is not a power of two >= 16", "exclude"),
        lambda: mlp(48),
    ),
    Case(
        "compile-pipeline-group-not-a-power-of-two",
        lambda m, c: lrc.PassManager("find-linears,quantize{group_size=40}").run(lrc.trace(m)),
        lrc.PolicyError,
        ("group_size=40 is not a power of two >= 16",),
        mlp,
    ),
    Case(
        "compile-override-group-not-a-power-of-two",
        lambda m, c: lrc.compile(m, P(**{**QALORA, "overrides": {"0": {"group_size": 24}}})),
        lrc.PolicyError,
        ("overrides['0'].group_size must be a power of two >= 16", "got 24"),
        lambda: mlp(48),
    ),
    Case(
        "compile-rank-above-layer",
        lambda m, c: lrc.compile(m, P(target=TARGETS, rank=33)),
        lrc.PolicyError,
        ("rank=33", "exceeds min(in, out)=32"),
        mlp,
    ),
    Case(
        "compile-override-rank-above-layer",
        lambda m, c: lrc.compile(m, P(target=TARGETS, rank=2, overrides={"2": {"rank": 20}})),
        lrc.PolicyError,
        ("rank=20 for layer '2'", "(in=32, out=16)", "min(in, out)=16"),
        mlp,
    ),
    Case(
        "compile-target-matches-nothing",
        lambda m, c: lrc.compile(m, P(target=["q_proj"])),
        lrc.TargetError,
        ("['q_proj'] matches none", "0, 2"),
        mlp,
    ),
    Case(
        "compile-target-partly-nothing",
        lambda m, c: lrc.compile(m, P(target=["0", "q_proj"])),
        lrc.TargetError,
        ("['q_proj'] match no linear layer while the others do",),
        mlp,
    ),
    Case(
        "compile-exclude-matches-nothing",
        lambda m, c: lrc.compile(m, P(exclude=["q_proj"])),
        lrc.TargetError,
        ("exclude pattern 'q_proj' matches no linear layer",),
        mlp,
    ),
    Case(
        "compile-exclude-everything",
        lambda m, c: lrc.compile(m, P(target=["0"], exclude=["0"])),
        lrc.TargetError,
        ("leaves no linear layer selected",),
        mlp,
    ),
    Case(
        "compile-override-matches-nothing",
        lambda m, c: lrc.compile(
            m, P(target=TARGETS, overrides={"0": {"rank": 2}, "q_proj": {"rank": 2}})
        ),
        lrc.TargetError,
        ("override pattern 'q_proj' matches no targeted layer",),
        mlp,
    ),
    Case(
        "compile-nan-weight-lora",
        lambda m, c: lrc.compile(m, P(target=TARGETS, rank=2)),
        lrc.TargetError,
        ("2: weight has 1 nan/inf", "exclude"),
        poisoned(float("nan")),
    ),
    Case(
        "compile-inf-weight-qalora",
        lambda m, c: lrc.compile(m, P(**QALORA)),
        lrc.PolicyError,
        ("2: weight has 1 nan/inf",),
        poisoned(float("inf")),
    ),
    Case(
        "compile-inf-weight-lrqat",
        lambda m, c: lrc.compile(m, P(**LRQAT)),
        lrc.PolicyError,
        ("2: weight has 1 nan/inf", "shape [16, 32]", "exclude"),
        poisoned(float("inf")),
    ),
    Case(
        "compile-bits-not-held-lrqat",
        lambda m, c: lrc.PassManager("find-linears,insert-lrqat{rank=2,bits=5}").run(lrc.trace(m)),
        lrc.PolicyError,
        ("0: bits=5 is not one of (2, 3, 4, 8)",),
        lambda: mlp(48),
    ),
    Case(
        "compile-rank-above-layer-lrqat",
        lambda m, c: lrc.compile(m, P(**{**LRQAT, "rank": 17})),
        lrc.PolicyError,
        ("rank=17 for layer '2'", "(in=32, out=16)", "use rank <= 16"),
        mlp,
    ),
    Case(
        "compile-nan-weight-rtn",
        lambda m, c: lrc.compile(m, P(method="rtn", target=TARGETS, group_size=16)),
        lrc.PolicyError,
        ("2: weight has 1 nan/inf",),
        poisoned(float("nan")),
    ),
    Case(
        "compile-nan-weight-qlora",
        lambda m, c: lrc.compile(m, P(method="qlora", target=TARGETS, rank=2)),
        lrc.PolicyError,
        ("layer '2'", "finite weights"),
        poisoned(float("-inf")),
    ),
    Case(
        "compile-trace-mode",
        lambda m, c: lrc.compile(m, P(), trace_mode="jit"),
        ValueError,
        ("trace_mode must be one of", "'jit'"),
        mlp,
    ),
    Case(
        "compile-example-inputs-wrong-shape",
        lambda m, c: lrc.compile(m, P(), example_inputs=(torch.zeros(2, 5),)),
        lrc.TraceError,
        ("torch.export of sequential failed", "example inputs"),
        mlp,
    ),
    Case(
        "compile-twice",
        lambda m, c: lrc.compile(m, P(rank=2)),
        lrc.LowRankError,
        ("already compiled",),
        qalora,
    ),
    Case(
        "compile-dump-dir-is-a-file",
        lambda m, c: lrc.compile(m, P(), dump_dir=c.out / "f"),
        lrc.OutputError,
        ("dump_dir", "it is a file"),
        mlp,
        setup=a_file("f"),
    ),
    Case(
        "compile-dump-dir-under-a-file",
        lambda m, c: lrc.compile(m, P(), dump_dir=c.out / "f" / "dumps"),
        lrc.OutputError,
        ("dump_dir", "is a file"),
        mlp,
        setup=a_file("f"),
    ),
    Case(
        "compile-fails-after-dumps",
        lambda m, c: lrc.compile(m, P(**{**QALORA, "rank": 40}), dump_dir=c.out / "d"),
        lrc.PolicyError,
        ("rank=40", "exceeds"),
        mlp,
        keeps=(
            "d/00-trace.txt",
            "d/01-find-linears.txt",
            "d/00-trace.html",
            "d/01-find-linears.html",
            "d/00-trace.json",
            "d/01-find-linears.json",
            "d/index.html",
        ),
    ),
    # --- fold --------------------------------------------------------------------------
    Case(
        "fold-not-a-module",
        lambda m, c: lrc.fold(None),
        TypeError,
        ("fold expects a torch.nn.Module",),
    ),
    Case(
        "fold-not-compiled",
        lambda m, c: lrc.fold(m),
        lrc.LowRankError,
        ("not produced by", "compile"),
        mlp,
    ),
    Case(
        "fold-rtn", lambda m, c: lrc.fold(m), lrc.LowRankError, ("no adapter layers", "rtn"), rtn()
    ),
    Case(
        "fold-folded",
        lambda m, c: lrc.fold(m),
        lrc.LowRankError,
        ("no adapter layers", "already folded"),
        folded,
    ),
    Case(
        "fold-zeros",
        lambda m, c: lrc.fold(m, zeros="nearest"),
        lrc.PolicyError,
        ("zeros must be one of", "'nearest'"),
        qalora,
    ),
    Case(
        "fold-zeros-type",
        lambda m, c: lrc.fold(m, zeros=1),
        lrc.PolicyError,
        ("zeros must be one of",),
        qalora,
    ),
    Case(
        "fold-nan-adapter",
        lambda m, c: lrc.fold(m),
        lrc.TargetError,
        ("nan/inf", "2.lora_a", "diverge"),
        diverged,
    ),
    Case(
        "fold-nan-adapter-lrqat",
        lambda m, c: lrc.fold(m),
        lrc.TargetError,
        ("nan/inf", "2.lora_b", "diverge"),
        lrqat(nan="lora_B"),
    ),
    Case(
        "fold-nan-scales-lrqat",
        lambda m, c: lrc.fold(m),
        lrc.TargetError,
        ("nan/inf", "2.scale_gain", "nothing was folded"),
        lrqat(nan="scale_gain", train_scales=True),
    ),
    Case(
        "fold-dump-dir-is-a-file",
        lambda m, c: lrc.fold(m, dump_dir=c.out / "f"),
        lrc.OutputError,
        ("dump_dir", "it is a file"),
        qalora,
        setup=a_file("f"),
    ),
    # --- export_onnx -------------------------------------------------------------------
    Case(
        "export-not-a-module",
        lambda m, c: lrc.export_onnx("m", c.out / "m.onnx", example_inputs=X),
        TypeError,
        ("export_onnx expects a torch.nn.Module",),
    ),
    Case(
        "export-path-type",
        export(path=3),
        ExportError,
        ("path must be a str or os.pathlike", "int"),
        folded,
    ),
    Case(
        "export-path-is-a-directory",
        lambda m, c: export(path=c.out)(m, c),
        ExportError,
        ("it is a directory", "name a file"),
        folded,
    ),
    Case(
        "export-directory-missing",
        lambda m, c: export(path=c.out / "nowhere" / "m.onnx")(m, c),
        ExportError,
        ("directory", "nowhere", "does not exist"),
        folded,
    ),
    Case(
        "export-directory-is-a-file",
        lambda m, c: export(path=c.out / "f" / "m.onnx")(m, c),
        ExportError,
        ("does not exist",),
        folded,
        setup=a_file("f"),
    ),
    Case(
        "export-format",
        export(format="gguf"),
        ExportError,
        ("format must be one of", "'gguf'"),
        folded,
    ),
    Case(
        "export-accuracy-level",
        export(accuracy_level=7),
        ExportError,
        ("accuracy_level must be", "got 7"),
        folded,
    ),
    Case(
        "export-accuracy-level-bool",
        export(accuracy_level=True),
        ExportError,
        ("accuracy_level", "true"),
        folded,
    ),
    Case(
        "export-no-example-inputs",
        export(example_inputs=None),
        ExportError,
        ("needs example_inputs",),
        folded,
    ),
    Case(
        "export-example-inputs-wrong-shape",
        export(example_inputs=(torch.zeros(2, 5),)),
        ExportError,
        ("torch.onnx export of sequential failed", "example inputs"),
        folded,
    ),
    Case(
        "export-qdq-unfolded",
        export(format="qdq"),
        ExportError,
        ("unfolded qalora adapter", "fold"),
        qalora,
    ),
    Case(
        "export-nf4",
        export(),
        ExportError,
        ("nf4 (qlora) has no onnx form",),
        lambda: lrc.compile(mlp(), P(method="qlora", target=TARGETS, rank=2)),
    ),
    Case(
        "export-3-bit", export(), ExportError, ("3-bit weights have no onnxruntime kernel",), rtn(3)
    ),
    Case(
        "export-3-bit-lrqat",
        export(),
        ExportError,
        ("0: 3-bit weights have no onnxruntime kernel", "bits 2, 4 or 8"),
        lrqat(3),
    ),
    Case(
        "export-disk-full-midway-keeps-earlier-file",
        export(),
        lrc.OutputError,
        ("cannot write", "m.onnx", "no space left"),
        folded,
        setup=earlier_file_then_enospc,
    ),
    Case(
        "export-disk-full-in-external-data",
        export(),
        lrc.OutputError,
        ("m.onnx", "no space left"),
        folded,
        setup=enospc_midway(external=True),
    ),
    Case(
        "export-permission-denied",
        export(),
        lrc.OutputError,
        ("m.onnx", "permission denied"),
        folded,
        setup=denied_at_rename,
    ),
    # --- inspect_onnx, runtime.load, a session --------------------------------------------
    *[
        Case(f"{fn.__name__}-{name}", fn, lrc.ModelFileError, words, setup=setup)
        for name, setup, words in ONNX_FILES
        for fn in (inspect, load)
    ],
    Case(
        "load-accuracy-level",
        lambda m, c: lrc.runtime.load(c.good, accuracy_level=9),
        ValueError,
        ("accuracy_level must be", "got 9"),
    ),
    Case(
        "load-threads",
        lambda m, c: lrc.runtime.load(c.good, threads=-1),
        ValueError,
        ("threads", "got -1"),
    ),
    Case(
        "session-dtype",
        session_call(np.zeros((2, 32), np.int64)),
        ValueError,
        ("must be float32", "int64"),
    ),
    Case(
        "session-rank",
        session_call(np.zeros((32,), np.float32)),
        ValueError,
        ("must have 2 dims", "[32]"),
    ),
    Case(
        "session-width",
        session_call(np.zeros((2, 8), np.float32)),
        ValueError,
        ("size 32 on axis 1", "[2, 8]"),
    ),
    Case(
        "session-too-many",
        session_call(np.zeros((2, 32), np.float32), 1),
        ValueError,
        ("takes 1 inputs",),
    ),
    Case(
        "session-unknown-name",
        session_call(ids=np.zeros((2, 32), np.float32)),
        ValueError,
        ("no input 'ids'",),
    ),
    Case("session-missing", session_call(), ValueError, ("missing input",)),
    # --- summary, trace, PassManager -----------------------------------------------------
    Case(
        "summary-not-a-module",
        lambda m, c: lrc.summary("m"),
        TypeError,
        ("summary expects a torch.nn.Module",),
    ),
    Case(
        "trace-not-a-module",
        lambda m, c: lrc.trace(3),
        TypeError,
        ("trace expects a torch.nn.Module", "int"),
    ),
    Case(
        "pipeline-unknown-pass",
        lambda m, c: lrc.PassManager("find-linears,prune"),
        lrc.PipelineError,
        ("unknown pass 'prune'",),
    ),
    Case(
        "pipeline-unknown-option",
        lambda m, c: lrc.PassManager("insert-lora{rnak=2}"),
        lrc.PipelineError,
        ("no option(s) ['rnak']",),
    ),
    Case(
        "pipeline-malformed",
        lambda m, c: lrc.PassManager("find-linears{target="),
        lrc.PipelineError,
        (),
    ),
    Case(
        "pipeline-fails-after-a-rewrite",
        lambda m, c: lrc.PassManager("find-linears,insert-lora{rank=2},fold{zeros=nearest}").run(
            lrc.trace(m)
        ),
        lrc.PassError,
        ("pass 'fold', step 3 of 3", "after find-linears, insert-lora", "'nearest'"),
        mlp,
    ),
    # --- CLI ---------------------------------------------------------------------------
    Case("cli-no-command", cli(), CliFailed, ("exit 2", "required")),
    Case("cli-unknown-command", cli("train"), CliFailed, ("exit 2", "invalid choice: 'train'")),
    Case(
        "cli-passes-extra-argument",
        cli("passes", "--all"),
        CliFailed,
        ("exit 2", "unrecognized arguments"),
    ),
    Case("cli-demo-bits", cli("demo", "--bits", "5"), CliFailed, ("exit 2", "invalid choice: 5")),
    Case(
        "cli-demo-group-size",
        cli("demo", "--group-size", "48"),
        CliFailed,
        ("exit 2", "invalid choice: 48"),
    ),
    Case(
        "cli-demo-rank-type",
        cli("demo", "--rank", "four"),
        CliFailed,
        ("exit 2", "invalid int value: 'four'"),
    ),
    Case(
        "cli-demo-rank-0",
        cli("demo", "--rank", "0", "--out", "{out}/job"),
        CliFailed,
        ("exit 2", "rank must be an integer >= 1, got 0"),
    ),
    Case(
        "cli-demo-steps",
        cli("demo", "--steps", "-1", "--out", "{out}/job"),
        CliFailed,
        ("exit 2", "steps must be an integer >= 0, got -1"),
    ),
    Case(
        "cli-demo-eval-sentences",
        cli("demo", "--eval-sentences", "100000", "--out", "{out}/job"),
        CliFailed,
        ("exit 2", "eval_sentences", "held-out", "100000"),
    ),
    Case(
        "cli-demo-out-under-a-file",
        cli("demo", "--out", "{out}/f/job"),
        CliFailed,
        ("exit 2", "cannot write to output directory", "--out"),
        setup=a_file("f"),
    ),
    Case(
        "cli-toy-rank-0",
        cli("toy", "--rank", "0"),
        CliFailed,
        ("exit 2", "rank must be an integer >= 1"),
    ),
    Case(
        "cli-toy-rank-above-layer",
        cli("toy", "--rank", "999"),
        CliFailed,
        ("exit 2", "exceeds min(in, out)"),
    ),
    Case(
        "cli-toy-target-nothing",
        cli("toy", "--target", "q_proj_typo"),
        CliFailed,
        ("exit 2", "matches none of the model's"),
    ),
    Case(
        "cli-toy-target-partly",
        cli("toy", "--target", "q_proj", "typo"),
        CliFailed,
        ("exit 2", "['typo'] match no linear layer while the others do"),
    ),
    Case(
        "cli-toy-dump-dir-is-a-file",
        cli("toy", "--dump-dir", "{out}/f"),
        CliFailed,
        ("exit 2", "dump_dir", "it is a file"),
        setup=a_file("f"),
    ),
]


def files(root: Path) -> dict[str, str]:
    """Every file under ``root`` (symlinks as their target) -> a hash of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = f"-> {os.readlink(p)}"
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def state(model: nn.Module | None):
    """Everything a failed call must leave as it was."""
    if model is None:
        return None
    tensors = {
        k: (
            v.dtype,
            tuple(v.shape),
            v.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes(),
        )
        for k, v in model.state_dict(keep_vars=True).items()
    }
    return {
        "modules": [(n, type(m), id(m)) for n, m in model.named_modules(remove_duplicate=False)],
        "tensors": tensors,
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "training": [m.training for m in model.modules()],
        "compile_info": id(lrc.compile_info(model)),
    }


@pytest.fixture(scope="module")
def good_onnx(tmp_path_factory) -> Path:
    model = lrc.compile(mlp(), lrc.Policy(method="rtn", target=TARGETS, group_size=16))
    return lrc.export_onnx(model, tmp_path_factory.mktemp("good") / "good.onnx", example_inputs=X)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, good_onnx, monkeypatch):
    ctx = SimpleNamespace(
        out=tmp_path / "out", inp=tmp_path / "in", good=good_onnx, monkeypatch=monkeypatch
    )
    ctx.out.mkdir()
    ctx.inp.mkdir()
    if case.setup is not None:
        case.setup(ctx)
    model = case.model() if case.model is not None else None
    before_files, before_model = files(tmp_path), state(model)
    with pytest.raises(case.error) as info:
        case.call(model, ctx)
    error = info.value
    assert isinstance(error, (lrc.LowRankError, ValueError, TypeError, CliFailed)), type(
        error
    ).__mro__
    message = str(error).lower()
    for word in case.words:
        assert word.lower() in message, f"{word!r} not in: {error}"
    after = files(tmp_path)
    kept = {str(Path("out") / k) for k in case.keeps}
    assert {k: v for k, v in after.items() if k not in kept} == before_files
    assert kept <= set(after), f"expected the completed dumps {sorted(kept)}, found {sorted(after)}"
    assert state(model) == before_model


def test_matrix_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
