"""``summary(model)``: which layers were rewritten and how, and what trains.

Works on any model: it walks the modules, so it also describes a model that was
rewritten without a graph (``trace_mode="modules"``, flagged in the header) or one
whose adapters were loaded later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .api import compile_info
from .runtime.layers import AdapterLayer
from .runtime.linear import is_linear_module, linear_shape


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    in_features: int
    out_features: int
    rank: int | None
    alpha: float | None
    bits: int | None
    group_size: int | None
    params: int  # parameters of the layer, base included
    trainable: int


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
        cols = ("layer", "kind", "in", "out", "rank", "alpha", "bits", "group", "params", "trainable")
        rows = [
            (r.name, r.kind, r.in_features, r.out_features, r.rank, r.alpha, r.bits, r.group_size, r.params, r.trainable)
            for r in self.layers
        ]
        text = [[("-" if v is None else (f"{v:g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else v))
                 for v in row] for row in rows]
        widths = [max([len(c)] + [len(str(t[i])) for t in text]) for i, c in enumerate(cols)]
        line = lambda vals: "  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))
        out = [f"tracer: {self.tracer or 'none (not compiled)'}"]
        if self.pipeline:
            out.append(f"pipeline: {self.pipeline}")
        out += [f"note: {n}" for n in self.notes]
        out += [line(cols), line(["-" * w for w in widths])] + [line(t) for t in text]
        pct = 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0
        out.append(f"{len(self.layers)} layer(s) rewritten, {len(self.untouched)} linear layer(s) untouched")
        out.extend(f"  untouched: {u}" for u in self.untouched)
        out.append(
            f"trainable: {self.trainable_params:,} of {self.total_params:,} parameters ({pct:.3f}%); "
            f"{_bytes(self.trainable_bytes)} of {_bytes(self.total_bytes)}"
        )
        return "\n".join(out)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def summary(model: nn.Module) -> Summary:
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary expects a torch.nn.Module, got {type(model).__name__}")
    rows, inside = [], set()
    for name, m in model.named_modules():
        if isinstance(m, AdapterLayer):
            d = m.describe()
            params = sum(p.numel() for p in m.parameters())
            trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
            rows.append(LayerRow(name, d["kind"], d["in_features"], d["out_features"], d.get("rank"),
                                 d.get("alpha"), d.get("bits"), d.get("group_size"), params, trainable))
            inside.update(f"{name}.{sub}" if sub else name for sub, _ in m.named_modules())
    info = compile_info(model)
    status = {op.name: op.status for op in info.linears} if info else {}
    untouched = []
    for name, m in model.named_modules():
        if name in inside or not is_linear_module(m):
            continue
        s = linear_shape(m)
        reason = status.get(name, "not in graph" if info and info.tracer != "modules" else "not targeted")
        untouched.append(f"{name} ({s.in_features}->{s.out_features}, {reason})")
    untouched += [f"{op.name} ({op.in_features}->{op.out_features}, functional F.linear)"
                  for op in (info.linears if info else []) if op.kind == "functional"]
    notes = []
    if info and info.tracer == "modules":
        notes.append("no graph: layers were matched by module name (trace_mode='modules'); "
                     "functional linear ops, if any, were not seen")
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
