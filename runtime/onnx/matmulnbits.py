"""ONNX translation of ``lowrank_compiler::int_linear``: one ``com.microsoft::MatMulNBits`` node.

The op's arguments are MatMulNBits' inputs as they are (``quant/group.py`` layouts), so the
translation passes the codes, scales and zero points (packed uint8, or float after a
``"float"`` fold) straight through: the export copies bytes and never re-quantizes.

onnxscript emits a custom-domain op only once its schema is registered with
``onnx.defs.register_schema``; ``register_matmulnbits_schema`` does that once per process
(the schema below follows onnxruntime's contrib-op definition; ``g_idx`` is deprecated and
always left empty).
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

DOMAIN = "com.microsoft"
_OPT = OpSchema.FormalParameterOption.Optional


def register_matmulnbits_schema() -> None:
    try:
        onnx.defs.get_schema("MatMulNBits", 1, DOMAIN)
        return
    except onnx.defs.SchemaError:
        pass
    p = OpSchema.FormalParameter
    schema = OpSchema(
        "MatMulNBits",
        DOMAIN,
        1,
        doc="Y = A @ dequantize(B, scales, zero_points)^T + bias, weights in blocks along K",
        inputs=[
            p("A", "T1"),
            p("B", "T2"),
            p("scales", "T1"),
            p("zero_points", "T3", param_option=_OPT),
            p("g_idx", "T4", param_option=_OPT),
            p("bias", "T1", param_option=_OPT),
        ],
        outputs=[p("Y", "T1")],
        type_constraints=[
            (
                "T1",
                ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"],
                "activations and scales",
            ),
            ("T2", ["tensor(uint8)", "tensor(int32)"], "packed codes"),
            (
                "T3",
                [
                    "tensor(uint8)",
                    "tensor(int32)",
                    "tensor(float16)",
                    "tensor(float)",
                    "tensor(bfloat16)",
                ],
                "zero points: packed integers or floats",
            ),
            ("T4", ["tensor(int32)"], "group index (deprecated)"),
        ],
        attributes=[
            OpSchema.Attribute("K", OpSchema.AttrType.INT, "input features"),
            OpSchema.Attribute("N", OpSchema.AttrType.INT, "output features"),
            OpSchema.Attribute("bits", OpSchema.AttrType.INT, "bits per weight"),
            OpSchema.Attribute(
                "block_size", OpSchema.AttrType.INT, "weights per block, a power of two >= 16"
            ),
            OpSchema.Attribute(
                "accuracy_level",
                OpSchema.AttrType.INT,
                "0: fp32 compute; 4: int8 activations",
                required=False,
            ),
        ],
    )
    onnx.defs.register_schema(schema)


def int_linear_translation(accuracy_level: int):
    """The onnxscript function torch.onnx uses for ``int_linear`` (accuracy level fixed per
    export)."""
    import onnxscript

    register_matmulnbits_schema()
    msft = onnxscript.values.Opset(DOMAIN, 1)

    def int_linear(
        x, qweight, scales, zeros, bias, bits: int, group_size: int, in_features: int = 0
    ):
        n, groups = qweight.shape[0], qweight.shape[1]  # K below L g: a partial last block
        return msft.MatMulNBits(
            x,
            qweight,
            scales,
            zeros,
            None,
            bias,
            K=in_features or groups * group_size,
            N=n,
            bits=bits,
            block_size=group_size,
            accuracy_level=accuracy_level,
        )

    return int_linear
