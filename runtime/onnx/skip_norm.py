"""fuse-skip-norm: a residual ``Add`` feeding an RMS norm becomes one fused node.

onnxruntime's CPU optimiser does not make this fusion on its own::

    s = Add(a, b);  y = SimplifiedLayerNormalization(s, gamma)     # gamma s / sqrt(mean(s^2) + eps)
        -> y, _, _, s = com.microsoft::SkipSimplifiedLayerNormalization(a, b, gamma, epsilon=eps)

The fused node's fourth output (``input_skip_bias_sum``) is the sum, so the next residual still
reads ``s``. An ``Add`` with an initializer input (a bias, not a residual) is left alone. An
onnxscript rewrite rule (``pattern`` / ``check`` / ``rewrite``).
"""

from __future__ import annotations

import onnx
from onnxscript.rewriter import pattern, rewrite

from .matmulnbits import DOMAIN
from .passes import OnnxPassResult, register_onnx_pass


class SkipNorm(pattern.RewriteRuleClassBase):
    def __init__(self):
        super().__init__(name="fuse-skip-norm")

    def pattern(self, op, a, b, gamma):
        s = op.Add(a, b, _outputs=["s"])
        y = op.SimplifiedLayerNormalization(s, gamma, _allow_other_attributes=True, _outputs=["y"])
        return y, s

    def check(self, context, a, b, gamma, y, s, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        for value in (a, b):
            if value.const_value is not None or value.is_initializer():
                return result.fail(f"{value.name} is a constant: a bias, not a residual", value)
        if s.producer().domain not in ("", "ai.onnx") or y.producer().domain not in ("", "ai.onnx"):
            return result.fail("not the default-domain Add and SimplifiedLayerNormalization")
        return result

    def rewrite(self, op, a, b, gamma, y, s, **_):
        eps = y.producer().attributes.get_float("epsilon", 1e-5)
        out, _, _, total = op.SkipSimplifiedLayerNormalization(
            a, b, gamma, epsilon=eps, _domain=DOMAIN, _outputs=4
        )
        return out, total


@register_onnx_pass(
    "fuse-skip-norm", "residual Add + RMS norm -> one SkipSimplifiedLayerNormalization"
)
def fuse_skip_norm(model: onnx.ModelProto) -> OnnxPassResult:
    norms = sum(1 for n in model.graph.node if n.op_type == "SimplifiedLayerNormalization")
    if not norms:
        return OnnxPassResult(model, False, {"fused": 0})
    out = rewrite(model, pattern.RewriteRuleSet([SkipNorm.rule()]))
    fused = sum(1 for n in out.graph.node if n.op_type == "SkipSimplifiedLayerNormalization")
    report = [f"{fused} of {norms} RMS norm(s) fused with the residual Add before them"]
    return OnnxPassResult(
        out if fused else model, fused > 0, {"fused": fused, "norms": norms}, report
    )
