"""ONNX translations of the fused decoder ops (``layers/attention_op.py``): one node each.

- ``lowrank_compiler::gqa`` -> ``com.microsoft::GroupQueryAttention`` (onnxruntime's contrib op);
- ``lowrank_compiler::rms_norm`` -> ``SimplifiedLayerNormalization``, which onnxruntime registers
  in the default domain at version 1 (onnx itself does not have it): it is emitted from an
  opset ``("", 1)`` while the model imports a newer default opset, as onnxruntime's own
  exporters do.

onnxscript emits a node only after its schema is registered with ``onnx.defs.register_schema``
(first registration wins per process: ``register_*`` return early when one exists). The
schemas follow onnxruntime 1.32 with one deliberate cut each: torch.onnx gives a custom node as
many outputs as its schema lists, so GroupQueryAttention's debug output ``output_qk`` and
SimplifiedLayerNormalization's ``inv_std_var`` are left out (the nodes get 3 and 1 outputs).
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

from .matmulnbits import DOMAIN

_OPT = OpSchema.FormalParameterOption.Optional
_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def _registered(name: str, domain: str) -> bool:
    try:
        onnx.defs.get_schema(name, 1, domain)
        return True
    except onnx.defs.SchemaError:
        return False


def register_gqa_schema() -> None:
    if _registered("GroupQueryAttention", DOMAIN):
        return
    p, a, t = OpSchema.FormalParameter, OpSchema.Attribute, OpSchema.AttrType
    optional = [("past_key", "T_CACHE"), ("past_value", "T_CACHE")]
    inputs = [
        p("query", "T"),
        p("key", "T", param_option=_OPT),
        p("value", "T", param_option=_OPT),
        *[p(n, ty, param_option=_OPT) for n, ty in optional],
        p("seqlens_k", "M"),
        p("total_sequence_length", "M"),
        p("cos_cache", "T", param_option=_OPT),
        p("sin_cache", "T", param_option=_OPT),
        p("position_ids", "T_POS", param_option=_OPT),
        p("attention_bias", "T", param_option=_OPT),
        p("head_sink", "T", param_option=_OPT),
        p("k_scale", "T_KV_SCALE", param_option=_OPT),
        p("v_scale", "T_KV_SCALE", param_option=_OPT),
        p("q_norm_weight", "T", param_option=_OPT),
        p("k_norm_weight", "T", param_option=_OPT),
        p("query_seqlens", "M", param_option=_OPT),
    ]
    ints = ("smooth_softmax", "qk_output", "causal", "sliding_window_cache", "kv_cache_bit_width")
    floats = ("qk_norm_epsilon", "q_norm_epsilon", "k_norm_epsilon")
    attributes = [
        a("num_heads", t.INT, "query heads"),
        a("kv_num_heads", t.INT, "key/value heads"),
        a("scale", t.FLOAT, "softmax scale (0: 1/sqrt(head_size))", required=False),
        a("do_rotary", t.INT, "rotary inside the op", required=False),
        a("rotary_interleaved", t.INT, "interleaved rotary pairs", required=False),
        a("local_window_size", t.INT, "sliding window (-1: none)", required=False),
        a("softcap", t.FLOAT, "0: no softcap", required=False),
        *[a(n, t.INT, "", required=False) for n in ints],
        *[a(n, t.STRING, "", required=False) for n in ("k_quant_type", "v_quant_type")],
        *[a(n, t.FLOAT, "", required=False) for n in floats],
    ]
    onnx.defs.register_schema(
        OpSchema(
            "GroupQueryAttention",
            DOMAIN,
            1,
            doc="Grouped-query attention over a BNSH KV cache (shared max-length buffer), rotary, "
            "causal mask",
            inputs=inputs,
            outputs=[
                p("output", "T"),
                p("present_key", "T_CACHE", param_option=_OPT),
                p("present_value", "T_CACHE", param_option=_OPT),
            ],
            type_constraints=[
                ("T", _FLOATS, "activations"),
                (
                    "T_CACHE",
                    [*_FLOATS, "tensor(uint8)", "tensor(int8)", "tensor(float8e4m3fn)"],
                    "KV cache",
                ),
                ("T_KV_SCALE", ["tensor(float)"], "KV cache scales"),
                ("T_POS", ["tensor(int64)"], "position ids"),
                ("M", ["tensor(int32)"], "lengths"),
            ],
            attributes=attributes,
        )
    )


def register_simplified_layernorm_schema() -> None:
    if _registered("SimplifiedLayerNormalization", ""):
        return
    p, a, t = OpSchema.FormalParameter, OpSchema.Attribute, OpSchema.AttrType
    onnx.defs.register_schema(
        OpSchema(
            "SimplifiedLayerNormalization",
            "",
            1,
            doc="RMS norm: scale * x / sqrt(mean(x^2) + epsilon) (onnxruntime)",
            inputs=[p("X", "T"), p("scale", "V")],
            outputs=[p("Y", "V")],
            type_constraints=[("T", _FLOATS, "input"), ("V", _FLOATS, "scale and output")],
            attributes=[
                a("axis", t.INT, "", required=False),
                a("epsilon", t.FLOAT, "", required=False),
                a("stash_type", t.INT, "", required=False),
            ],
        )
    )


def gqa_translation():
    """The onnxscript function torch.onnx uses for ``gqa``: one GroupQueryAttention node."""
    import onnxscript

    register_gqa_schema()
    msft = onnxscript.values.Opset(DOMAIN, 1)

    def gqa(
        query,
        key,
        value,
        past_key,
        past_value,
        seqlens_k,
        total_sequence_length,
        cos_cache,
        sin_cache,
        num_heads: int,
        kv_num_heads: int,
        scale: float = 0.0,
        do_rotary: int = 0,
        rotary_interleaved: int = 0,
        local_window_size: int = -1,
        softcap: float = 0.0,
    ):
        return msft.GroupQueryAttention(
            query,
            key,
            value,
            past_key,
            past_value,
            seqlens_k,
            total_sequence_length,
            cos_cache,
            sin_cache,
            num_heads=num_heads,
            kv_num_heads=kv_num_heads,
            scale=scale,
            do_rotary=do_rotary,
            rotary_interleaved=rotary_interleaved,
            local_window_size=local_window_size,
            softcap=softcap,
        )

    return gqa


def rms_norm_translation():
    """The onnxscript function torch.onnx uses for ``rms_norm``: one SimplifiedLayerNormalization
    node."""
    import onnxscript

    register_simplified_layernorm_schema()
    default_v1 = onnxscript.values.Opset("", 1)

    def rms_norm(x, weight, eps: float):
        return default_v1.SimplifiedLayerNormalization(
            x, weight, axis=-1, epsilon=eps, stash_type=1
        )

    return rms_norm


def attention_translations() -> dict:
    """The custom translation table entries for both ops (importing ``attention_op`` registers
    them)."""
    import torch

    from ..layers import attention_op  # noqa: F401

    return {
        torch.ops.lowrank_compiler.gqa.default: gqa_translation(),
        torch.ops.lowrank_compiler.rms_norm.default: rms_norm_translation(),
    }
