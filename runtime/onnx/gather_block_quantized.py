"""ONNX translation of ``lowrank_compiler::int_embedding``: ``Reshape`` +
``com.microsoft::GatherBlockQuantized``.

The op takes its table as uint8 ``[V, D * bits / 8]`` (codes packed along the row, low
nibble first), scales ``[V, D / g]`` and packed zero points ``[V, ceil(D / g * bits / 8)]``:
``quant/group.py``'s MatMulNBits layout with the codes' two trailing axes merged. The
translation reshapes the stored ``[V, D / g, g * bits / 8]`` codes inside the graph (as
onnxruntime-genai's model builder does for ``shared_embeddings``), so a tied head's
MatMulNBits and the lookup read one initializer. Schema registration follows
``matmulnbits.py``.
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

from .matmulnbits import DOMAIN

_OPT = OpSchema.FormalParameterOption.Optional


def register_gather_block_quantized_schema() -> None:
    try:
        onnx.defs.get_schema("GatherBlockQuantized", 1, DOMAIN)
        return
    except onnx.defs.SchemaError:
        pass
    p = OpSchema.FormalParameter
    schema = OpSchema(
        "GatherBlockQuantized",
        DOMAIN,
        1,
        doc="Gather rows of a block-quantized table and dequantize them",
        inputs=[
            p("data", "T1"),
            p("indices", "Tind"),
            p("scales", "T2"),
            p("zero_points", "T1", param_option=_OPT),
        ],
        outputs=[p("output", "T2")],
        type_constraints=[
            ("T1", ["tensor(uint8)", "tensor(int4)", "tensor(uint4)"], "codes and zero points"),
            ("T2", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "scales and output"),
            ("Tind", ["tensor(int32)", "tensor(int64)"], "indices"),
        ],
        attributes=[
            OpSchema.Attribute("bits", OpSchema.AttrType.INT, "bits per code", required=False),
            OpSchema.Attribute(
                "block_size", OpSchema.AttrType.INT, "codes per block", required=False
            ),
            OpSchema.Attribute(
                "gather_axis", OpSchema.AttrType.INT, "axis gathered", required=False
            ),
            OpSchema.Attribute(
                "quantize_axis", OpSchema.AttrType.INT, "axis quantized in blocks", required=False
            ),
        ],
    )
    onnx.defs.register_schema(schema)


def int_embedding_translation():
    """The onnxscript function torch.onnx uses for ``int_embedding``."""
    import onnxscript
    from onnxscript import opset21 as op

    register_gather_block_quantized_schema()
    msft = onnxscript.values.Opset(DOMAIN, 1)

    def int_embedding(
        ids, qweight, scales, zeros, bits: int, group_size: int, embedding_dim: int = 0
    ):
        rows, groups, blob = qweight.shape
        table = op.Reshape(qweight, op.Constant(value_ints=[rows, groups * blob]))  # (V, L blob)
        width = embedding_dim * bits // 8
        if embedding_dim and width < groups * blob:  # a partial last group: the row's own bytes
            table = op.Slice(
                table,
                op.Constant(value_ints=[0]),
                op.Constant(value_ints=[width]),
                op.Constant(value_ints=[1]),
            )  # (V, D * bits / 8)
        return msft.GatherBlockQuantized(
            table,
            ids,
            scales,
            zeros,
            bits=bits,
            block_size=group_size,
            gather_axis=0,
            quantize_axis=1,
        )

    return int_embedding
