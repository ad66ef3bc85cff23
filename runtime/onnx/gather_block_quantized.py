"""ONNX translation of ``lowrank_compiler::int_embedding``: ``Reshape`` +
``com.microsoft::GatherBlockQuantized``.

The op takes its table as uint8 ``[V, D * bits / 8]`` (codes packed along the row, low
nibble first), scales ``[V, D / g]`` and packed zero points ``[V, ceil(D / g * bits / 8)]``:
``quant.py``'s MatMulNBits layout with the codes' two trailing axes merged. The
translation reshapes the stored ``[V, D / g, g * bits / 8]`` codes inside the graph (as
onnxruntime-genai's model builder does for ``shared_embeddings``), so a tied head's
MatMulNBits and the lookup read one initializer. Schema registration follows
``matmulnbits.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
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

    def int_embedding(ids, qweight, scales, zeros, bits: int, group_size: int):
        rows, groups, blob = qweight.shape
        table = op.Reshape(
            qweight, op.Constant(value_ints=[rows, groups * blob])
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


def share_table_codes(model: onnx.ModelProto) -> int:
    """Point each ``GatherBlockQuantized`` whose table is a copy of a ``MatMulNBits`` head's codes
    at those codes, through a ``Reshape``; returns how many tables were shared.

    The exporter's constant folding turns the translation's ``Reshape(head codes)`` into an
    initializer of its own, which would store a tied table twice; this undoes that copy
    (byte-equal tables only, so nothing changes numerically)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    tables = {
        n.input[0]
        for n in graph.node
        if n.op_type == "GatherBlockQuantized" and n.input[0] in inits
    }
    sizes = {int(np.prod(inits[t].dims)) for t in tables}
    heads: dict[
        bytes, str
    ] = {}  # only heads the size of a table: the other layers' bytes are never copied
    for node in graph.node:
        if (
            node.op_type == "MatMulNBits"
            and node.domain == DOMAIN
            and node.input[1] in inits
            and int(np.prod(inits[node.input[1]].dims)) in sizes
        ):
            heads.setdefault(numpy_helper.to_array(inits[node.input[1]]).tobytes(), node.input[1])
    nodes, shared, dropped = [], 0, set()
    for node in graph.node:
        table = node.input[0] if node.op_type == "GatherBlockQuantized" else None
        head = (
            heads.get(numpy_helper.to_array(inits[table]).tobytes())
            if table in tables and heads
            else None
        )
        if head is not None and head != table:
            shape = f"{table}.shape"
            graph.initializer.append(
                numpy_helper.from_array(np.array(inits[table].dims, np.int64), shape)
            )
            nodes.append(
                helper.make_node(
                    "Reshape", [head, shape], [f"{table}.shared"], name=f"{table}.Reshape"
                )
            )
            node.input[0] = f"{table}.shared"
            dropped.add(table)
            shared += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return shared
