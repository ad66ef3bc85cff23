"""split-form: a ``MatMulNBits`` node with real-valued zero points becomes the exact integer form.

Where a format cannot take float zero points (``formats.takes_float_zeros``: standard ONNX has
none, onnxruntime's CPU kernel refuses them at 8 bits), each such node is rewritten as integer
zero points ``zr = clamp(round(z), 0, 2^b - 1)`` plus the exact correction (``formats``' split
correction, ``D^T = (scales (zr - z))^T``, ``[L, N]``)::

    MatMulNBits(A, B, scales, z: float [N, L], ...)
        -> Add(MatMulNBits(A, B, scales, pack(zr), ...),
               MatMul(ReduceSum(Reshape(A, [..., L, g]), -1), D^T))

computed from the node's own initializers (a partial last group's inputs padded with zeros before
the group sums); the codes and scales are untouched. A node whose
zero points are integers already (stored as floats) only gets packed zero points, no correction.
Written as an onnxscript rewrite rule (``pattern`` / ``check`` / ``rewrite``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnxscript.rewriter import pattern, rewrite

from ..quant.formats import EXPORT_FORMATS, check_choice, qmax, split_correction, takes_float_zeros
from ..quant.group import pack_zeros
from .matmulnbits import DOMAIN
from .passes import OnnxPassResult, register_onnx_pass


def _const(value: ir.Value | None) -> np.ndarray | None:
    return None if value is None or value.const_value is None else value.const_value.numpy()


class SplitFloatZeros(pattern.RewriteRuleClassBase):
    def __init__(self, fmt: str):
        super().__init__(name="split-form")
        self.fmt = fmt

    def pattern(self, op, a, b, scales, zeros):
        return op.MatMulNBits(
            a, b, scales, zeros, _domain=DOMAIN, _allow_other_inputs=True, _outputs=["y"]
        )

    def check(self, context, a, b, scales, zeros, y, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        z = _const(zeros)
        if z is None or z.dtype not in (np.float32, np.float16):
            return result.fail("zero points are packed integers or not an initializer")
        bits = y.producer().attributes.get_int("bits", 4)
        if takes_float_zeros(self.fmt, bits):
            return result.fail(f"format {self.fmt} takes {bits}-bit float zero points as they are")
        if _const(scales) is None:
            return result.fail("scales are not an initializer")
        return result

    def rewrite(self, op, a, b, scales, zeros, y, **_):
        node = y.producer()
        attrs = {k: v for k, v in node.attributes.items()}
        bits, g = node.attributes.get_int("bits", 4), node.attributes.get_int("block_size")
        z = torch.from_numpy(_const(zeros).astype(np.float64))  # (N, L)
        s = torch.from_numpy(_const(scales).astype(np.float32))  # (N, L)
        zr = torch.clamp(torch.round(z), 0, qmax(bits))
        packed = op.initializer(
            ir.tensor(pack_zeros(zr.to(torch.uint8), bits).numpy()), name=f"{zeros.name}.int"
        )
        rest = list(node.inputs[4:])
        out = op.MatMulNBits(a, b, scales, packed, *rest, _domain=DOMAIN, **attrs)
        d_t = split_correction(s, zr, z)  # (L, N)
        if not d_t.any():
            return out
        groups = d_t.shape[0]
        rank = len(a.shape) if a.shape is not None else None
        if rank is not None:
            shape = op.initializer(
                ir.tensor(np.array([0] * (rank - 1) + [groups, g], np.int64)),
                name=f"{zeros.name}.groups",
            )
        else:  # leading axes unknown: [..., L, g] from A's own shape
            lead = op.Slice(op.Shape(a), op.Constant(value_ints=[0]), op.Constant(value_ints=[-1]))
            shape = op.Concat(lead, op.Constant(value_ints=[groups, g]), axis=0)
        axis = op.initializer(ir.tensor(np.array([-1], np.int64)), name=f"{zeros.name}.axis")
        extra = groups * g - node.attributes.get_int("K")  # a partial last group: zero inputs
        if extra:
            pads = op.initializer(
                ir.tensor(np.array([0, extra], np.int64)), name=f"{zeros.name}.pads"
            )
            a = op.Pad(a, pads, None, axis)
        sums = op.ReduceSum(op.Reshape(a, shape), axis, keepdims=0)  # (..., L)
        dtype = _const(scales).dtype  # the activations' type: float32, or float16
        correction = op.initializer(
            ir.tensor(d_t.numpy().astype(dtype)), name=f"{zeros.name}.correction"
        )
        return op.Add(out, op.MatMul(sums, correction))


@register_onnx_pass(
    "split-form",
    "float zero points the format cannot take -> integer zero points + exact correction",
)
def split_form(model: onnx.ModelProto, *, format: str = "qdq") -> OnnxPassResult:
    check_choice(format, EXPORT_FORMATS, "format")
    floats = [
        n
        for n in model.graph.node
        if n.op_type == "MatMulNBits"
        and len(n.input) > 3
        and n.input[3]
        and _float_initializer(model, n.input[3])
    ]
    if not floats:
        return OnnxPassResult(model, False, {"split": 0})
    rules = pattern.RewriteRuleSet([SplitFloatZeros.rule(format)])
    out = rewrite(model, rules)
    left = sum(
        1
        for n in out.graph.node
        if n.op_type == "MatMulNBits" and len(n.input) > 3 and _float_initializer(out, n.input[3])
    )
    split = len(floats) - left
    corrected = sum(1 for n in out.graph.node if n.op_type == "ReduceSum") - sum(
        1 for n in model.graph.node if n.op_type == "ReduceSum"
    )
    report = [
        f"{split} of {len(floats)} float-zero MatMulNBits node(s) split, {corrected} with a "
        "correction"
    ]
    return OnnxPassResult(
        out if split else model,
        split > 0,
        {"split": split, "corrected": corrected, "kept_float": left},
        report,
    )


def _float_initializer(model: onnx.ModelProto, name: str) -> bool:
    return any(
        i.name == name and i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        for i in model.graph.initializer
    )
