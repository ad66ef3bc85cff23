"""``summary(model)``: which layers were rewritten and how, and what trains.

Works on any model: it walks the modules, so it also describes a model that was
rewritten without a graph (``trace_mode="modules"``, flagged in the notes), a quantized
one (``method="rtn"``) and a folded one (with each layer's fold error).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .api import compile_info
from .runtime.layers.linear_kinds import is_linear_module, linear_shape
from .runtime.layers.protocol import AdapterLayer, is_quantized_linear


@dataclass(frozen=True)
class LayerRow:
    name: str
    # lora, qalora, qalora-int, lrqat, qlora, int4 (int2/3/8), nf4, linear (a folded float layer)
    kind: str
    in_features: int
    out_features: int
    rank: int | None
    alpha: float | None
    bits: int | None  # bits of the stored base weight (32 for an fp32 base)
    group_size: int | None
    zeros: str | None  # integer layers: "int", "float" or "split"
    params: int  # parameters of the layer, base included
    trainable: int
    bytes: int  # parameters and buffers of the layer
    fold_rel_err: float | None = None  # max|y_fold - y| / max|y| measured by fold


@dataclass(frozen=True)
class Summary:
    layers: list[LayerRow]
    untouched: list[str]  # linear layers left as they were, with the reason when known
    trainable_params: int
    total_params: int
    trainable_bytes: int
    total_bytes: int  # parameters and buffers
    tracer: str | None
    pipeline: str | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        folded = any(r.fold_rel_err is not None for r in self.layers)
        cols = [
            "layer",
            "kind",
            "in",
            "out",
            "rank",
            "alpha",
            "bits",
            "group",
            "zeros",
            "trainable",
            "bytes",
        ]
        cols += ["fold err"] if folded else []
        rows = []
        for r in self.layers:
            row = [
                r.name,
                r.kind,
                r.in_features,
                r.out_features,
                r.rank,
                r.alpha,
                r.bits,
                r.group_size,
                r.zeros,
                r.trainable,
                r.bytes,
            ]
            rows.append(
                row
                + ([None if r.fold_rel_err is None else f"{r.fold_rel_err:.1e}"] if folded else [])
            )
        text = [[_cell(v) for v in row] for row in rows]
        widths = [max([len(c)] + [len(t[i]) for t in text]) for i, c in enumerate(cols)]

        def line(vals):
            return "  ".join(
                v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths))
            )

        out = [f"tracer: {self.tracer or 'none (not compiled)'}"]
        if self.pipeline:
            out.append(f"pipeline: {self.pipeline}")
        out += [f"note: {n}" for n in self.notes]
        out += [line(cols), line(["-" * w for w in widths])] + [line(t) for t in text]
        pct = 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0
        out.append(
            f"{len(self.layers)} layer(s) rewritten, {len(self.untouched)} linear layer(s) "
            "untouched"
        )
        out.extend(f"  untouched: {u}" for u in self.untouched)
        out.append(
            f"trainable: {self.trainable_params:,} of {self.total_params:,} parameters "
            f"({pct:.3f}%); "
            f"{_bytes(self.trainable_bytes)} of {_bytes(self.total_bytes)}"
        )
        return "\n".join(out)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _row(name: str, m: nn.Module, fold_errors: dict) -> LayerRow:
    if isinstance(m, AdapterLayer) or is_quantized_linear(m):
        d = m.describe()
    else:  # a float layer that fold merged an adapter into
        s = linear_shape(m)
        d = {
            "kind": "linear",
            "in_features": s.in_features,
            "out_features": s.out_features,
            "bits": m.weight.element_size() * 8,
        }
    tensors = list(m.parameters()) + list(m.buffers())
    return LayerRow(
        name=name,
        kind=d["kind"],
        in_features=d["in_features"],
        out_features=d["out_features"],
        rank=d.get("rank"),
        alpha=d.get("alpha"),
        bits=d.get("bits"),
        group_size=d.get("group_size"),
        zeros=d.get("zeros"),
        params=sum(p.numel() for p in m.parameters()),
        trainable=sum(p.numel() for p in m.parameters() if p.requires_grad),
        bytes=sum(t.numel() * t.element_size() for t in tensors),
        fold_rel_err=fold_errors.get(name),
    )


def summary(model: nn.Module) -> Summary:
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary expects a torch.nn.Module, got {type(model).__name__}")
    info = compile_info(model)
    fold_errors = (info.fold_errors or {}) if info else {}
    rows, inside = [], set()
    for name, m in model.named_modules():
        if name in inside:
            continue
        if isinstance(m, AdapterLayer) or is_quantized_linear(m) or name in fold_errors:
            rows.append(_row(name, m, fold_errors))
            inside.update(f"{name}.{sub}" for sub, _ in m.named_modules() if sub)
    status = {op.name: op.status for op in info.linears} if info else {}
    untouched = []
    for name, m in model.named_modules():
        if name in inside or name in fold_errors or not is_linear_module(m):
            continue
        s = linear_shape(m)
        reason = status.get(
            name, "not in graph" if info and info.tracer != "modules" else "not targeted"
        )
        untouched.append(f"{name} ({s.in_features}->{s.out_features}, {reason})")
    untouched += [
        f"{op.name} ({op.in_features}->{op.out_features}, functional F.linear)"
        for op in (info.linears if info else [])
        if op.kind == "functional"
    ]
    notes = []
    if info and info.tracer == "modules":
        notes.append(
            "no graph: layers were matched by module name (trace_mode='modules'); "
            "functional linear ops, if any, were not seen"
        )
    params = list(model.parameters())
    buffers = list(model.buffers())
    return Summary(
        layers=rows,
        untouched=untouched,
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_params=sum(p.numel() for p in params),
        trainable_bytes=sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        total_bytes=sum(t.numel() * t.element_size() for t in params + buffers),
        tracer=info.tracer if info else None,
        pipeline=info.pipeline if info else None,
        notes=notes,
    )
