"""The ONNX stage as passes: the FX passes' contract, on an exported ``onnx.ModelProto``.

An ONNX pass is a plain function ``fn(model, **options) -> OnnxPassResult(model, modified,
stats, report)``, registered under a kebab-case name with a one-line summary
(``register_onnx_pass``); its keyword-only parameters are its options. ``run_onnx_passes``
runs a list of ``OnnxPassSpec`` in order and, after each pass,

- verifies the graph: ``onnx.checker`` and strict shape inference (``verify``);
- compares its nodes with those before (``diff_nodes``: added, removed, rewritten), and hands
  the pass, its result, the changes and the dump text (``render_dump``: a header, then one line
  per node with its inputs' and outputs' dtypes and shapes) to the caller's ``dump``, which
  writes ``NN-<pass>.txt`` and its HTML page;
- wraps a failure in ``OnnxPassError`` naming the pass and the passes before it.

With ``dump``, the graph as torch gave it is dumped first, as ``onnx-as-exported``.

The built-in passes (``BUILTIN``) register when this module first looks one up.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import onnx

from ..errors import LowRankError

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
BUILTIN = ("share_tables", "split_form", "qdq", "skip_norm", "fuse_qkv", "adapter_inputs")
AS_EXPORTED = "onnx-as-exported"  # the name of the first ONNX dump: the graph before any pass
_TWO_GB = 2**31  # protobuf's limit: the checker and shape inference take a model below it


class OnnxPassError(LowRankError, RuntimeError):
    """An ONNX pass failed or left an invalid graph; names the pass and the passes before it."""

    def __init__(self, message: str, *, pass_name: str, before: tuple[str, ...]):
        super().__init__(message)
        self.pass_name, self.before = pass_name, before


@dataclass
class OnnxPassResult:
    model: onnx.ModelProto
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)  # extra lines for the dump header


@dataclass(frozen=True)
class OnnxPassInfo:
    name: str
    summary: str
    fn: Callable[..., OnnxPassResult]

    @property
    def options(self) -> dict[str, Any]:
        """Option name -> default, from the function's keyword-only parameters."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


@dataclass(frozen=True)
class OnnxPassSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}{{{','.join(f'{k}={_text(v)}' for k, v in self.options.items())}}}"


def _text(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "none"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


_REGISTRY: dict[str, OnnxPassInfo] = {}


def register_onnx_pass(name: str, summary: str):
    """Decorator: register ``fn`` as the ONNX pass ``name``."""
    if not _NAME.match(name):
        raise ValueError(f"ONNX pass name {name!r} must be kebab-case, like 'lower-to-qdq'")

    def deco(fn):
        other = _REGISTRY.get(name)
        if other is not None and other.fn is not fn:
            raise ValueError(
                f"an ONNX pass named {name!r} is already registered ({other.fn.__module__})"
            )
        _REGISTRY[name] = OnnxPassInfo(name, summary, fn)
        return fn

    return deco


def registered_onnx_passes() -> dict[str, OnnxPassInfo]:
    for module in BUILTIN:  # each import registers its pass
        importlib.import_module(f"{__package__}.{module}")
    return dict(_REGISTRY)


def get_onnx_pass(name: str) -> OnnxPassInfo:
    passes = registered_onnx_passes()
    if name not in passes:
        raise KeyError(f"unknown ONNX pass {name!r}; registered: {', '.join(sorted(passes))}")
    return passes[name]


def verify(model: onnx.ModelProto) -> None:
    """``onnx.checker`` and strict shape inference; a model past 2 GB is checked when written."""
    if model.ByteSize() >= _TWO_GB:
        return
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def node_key(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}->{','.join(node.output)}"


def signature(model: onnx.ModelProto) -> dict[str, str]:
    """Each node's name -> its op, inputs, outputs and attributes: what ``diff_nodes`` compares."""
    out = {}
    for node in model.graph.node:
        attrs = ",".join(f"{a.name}={onnx.helper.get_attribute_value(a)!r}" for a in node.attribute)
        out[node_key(node)] = (
            f"{node.domain}::{node.op_type}({','.join(node.input)})->{','.join(node.output)} "
            f"{attrs}"
        )
    return out


def diff_nodes(before: dict[str, str], model: onnx.ModelProto) -> dict[str, list[str]]:
    after = signature(model)
    return {
        "added": [n for n in after if n not in before],
        "removed": [n for n in before if n not in after],
        "rewritten": [n for n in after if n in before and before[n] != after[n]],
    }


DumpFn = Callable[[OnnxPassSpec, OnnxPassResult, dict, str], None]


def run_onnx_passes(
    model: onnx.ModelProto,
    specs: list[OnnxPassSpec],
    *,
    check: bool = True,
    dump: DumpFn | None = None,
) -> tuple[onnx.ModelProto, list[tuple[OnnxPassSpec, OnnxPassResult]]]:
    """Run ``specs`` in order on ``model`` (module docstring); returns the model and each result."""
    from .inspection import model_lines

    done: list[str] = []
    results = []
    if dump is not None:  # the graph as torch.onnx gave it, before any pass
        first = OnnxPassSpec(AS_EXPORTED)
        stats = {
            "nodes": len(model.graph.node),
            "initializers": len(model.graph.initializer),
            "passes": ",".join(str(s) for s in specs),
        }
        text = render_dump(
            "the ONNX graph as torch.onnx exported it",
            [f"passes next: {stats['passes']}"],
            model_lines(model),
        )
        dump(first, OnnxPassResult(model, False, stats), {}, text)
    for step, spec in enumerate(specs, start=1):
        before = signature(model) if dump is not None else {}
        try:
            info = get_onnx_pass(spec.name)
            unknown = sorted(set(spec.options) - set(info.options))
            if unknown:
                raise ValueError(f"no option(s) {unknown}; its options are {sorted(info.options)}")
            result = info.fn(model, **spec.options)
            if not isinstance(result, OnnxPassResult):
                raise TypeError(f"returned {type(result).__name__}, not OnnxPassResult")
            if check:
                verify(result.model)
        except OSError:
            raise  # the machine's failure (a full disk), not the pass's
        except Exception as e:
            after = f" (after {', '.join(done)})" if done else " (the first ONNX pass)"
            raise OnnxPassError(
                f"ONNX pass {spec.name!r}, step {step} of {len(specs)}{after}, failed: {e}",
                pass_name=spec.name,
                before=tuple(done),
            ) from e
        model = result.model
        results.append((spec, result))
        if dump is not None:
            changes = diff_nodes(before, model)
            header = dump_header(step, len(specs), done, result, changes)
            dump(
                spec,
                result,
                changes,
                render_dump(f"after ONNX pass {spec}", header, model_lines(model)),
            )
        done.append(spec.name)
    return model, results


def dump_header(
    step: int, total: int, done: list[str], result: OnnxPassResult, changes: dict[str, list[str]]
) -> list[str]:
    lines = [
        f"ONNX step {step} of {total}" + (f", after: {', '.join(done)}" if done else ""),
        f"modified: {'yes' if result.modified else 'no'}",
        f"stats: {result.stats}",
        f"nodes: +{len(changes['added'])} added, -{len(changes['removed'])} removed, "
        f"~{len(changes['rewritten'])} rewritten",
    ]
    lines += [f"  {line}" for line in result.report]
    lines += [f"  + {n}" for n in changes["added"]]
    lines += [f"  - {n}" for n in changes["removed"]]
    lines += [f"  ~ {n}" for n in changes["rewritten"]]
    return lines


def render_dump(title: str, header: list[str], body: list[str]) -> str:
    return "\n".join([f"// {title}", *[f"// {h}" for h in header], "", *body]) + "\n"
