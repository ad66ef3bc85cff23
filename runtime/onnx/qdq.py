"""lower-to-qdq: ``MatMulNBits`` nodes as standard ONNX, ``DequantizeLinear(axis=0, block_size=g)``
+ ``MatMul``.

The layout onnxruntime fuses back into its MatMulNBits kernel (opset >= 21)::

    W_q   UINT4/UINT8 [K, N]         the same codes, transposed (a re-layout, not a re-quantization)
    scale float       [K/g, N]
    zero  UINT4/UINT8 [K/g, N]
    W = DequantizeLinear(W_q, scale, zero, axis=0, block_size=g);  Y = MatMul(A, W) [+ bias]

When ``g`` does not divide ``K`` the last block is short: ``W_q`` keeps its ``K`` rows and the
scales and zero points ``ceil(K/g)``; the ONNX spec's blocked ``DequantizeLinear`` takes that
(its reference implementation, and onnxruntime, which still fuses it into MatMulNBits).

Standard ONNX has no float zero points: the ``split-form`` pass runs first, so only integer
zero points reach here.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..quant.formats import QDQ_BITS
from ..quant.group import group_count, unpack
from .matmulnbits import DOMAIN
from .passes import OnnxPassResult, register_onnx_pass


def _int_tensor(name: str, codes: np.ndarray, bits: int) -> onnx.TensorProto:
    """codes uint8 (any shape) -> a UINT4 (two a byte, first in the low nibble) or UINT8
    initializer."""
    flat = codes.reshape(-1).astype(np.uint8)
    if bits == 8:
        return helper.make_tensor(name, TensorProto.UINT8, codes.shape, flat.tobytes(), raw=True)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.UINT4, codes.shape, packed.tobytes(), raw=True)


@register_onnx_pass(
    "lower-to-qdq", "MatMulNBits -> standard DequantizeLinear(block_size=g) + MatMul"
)
def lower_to_qdq(model: onnx.ModelProto) -> OnnxPassResult:
    lowered = _lower(model)
    report = [f"{lowered} MatMulNBits node(s) -> DequantizeLinear + MatMul"] if lowered else []
    return OnnxPassResult(model, lowered > 0, {"lowered": lowered}, report)


def _lower(model: onnx.ModelProto) -> int:
    """Rewrite every MatMulNBits node in place; returns how many were lowered."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes, lowered, dropped = [], 0, set()
    for node in graph.node:
        if node.op_type != "MatMulNBits" or node.domain != DOMAIN:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n, bits, g = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
        if bits not in QDQ_BITS:
            raise ValueError(
                f"{node.name}: {bits}-bit weights have no standard ONNX DequantizeLinear form; use "
                f"format='matmulnbits' or bits in {tuple(QDQ_BITS)}"
            )
        a, b, s = node.input[:3]
        z = node.input[3] if len(node.input) > 3 and node.input[3] else None
        bias = node.input[5] if len(node.input) > 5 and node.input[5] else None
        groups = group_count(k, g)  # a partial last block: DequantizeLinear's is short too
        blob = torch.from_numpy(numpy_helper.to_array(inits[b]).copy())
        codes = unpack(blob, bits, g).reshape(n, groups * g)[:, :k].numpy()
        scales = numpy_helper.to_array(inits[s])  # (N, L)
        if z is None:
            zeros = np.full(
                (n, groups), 1 << (bits - 1), np.uint8
            )  # MatMulNBits' default zero point
        else:
            zarr = numpy_helper.to_array(inits[z])
            if zarr.dtype != np.uint8:
                raise ValueError(
                    f"{node.name}: float zero points have no DequantizeLinear form; convert the "
                    "layer "
                    f"to integer zero points plus correction first"
                )
            zeros = unpack(torch.from_numpy(zarr.copy()), bits, groups).numpy()
        stem = b[: -len(".qweight")] if b.endswith(".qweight") else b
        names = (f"{stem}.qweight_kn", f"{stem}.scales_ln", f"{stem}.zeros_ln")
        graph.initializer.extend(
            [
                _int_tensor(names[0], np.ascontiguousarray(codes.T), bits),
                numpy_helper.from_array(np.ascontiguousarray(scales.T), names[1]),
                _int_tensor(names[2], np.ascontiguousarray(zeros.T), bits),
            ]
        )
        w = f"{stem}.dequantized"
        out = node.output[0]
        mm_out = f"{out}.matmul" if bias else out
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                list(names),
                [w],
                name=f"{stem}.DequantizeLinear",
                axis=0,
                block_size=g,
            )
        )
        nodes.append(helper.make_node("MatMul", [a, w], [mm_out], name=f"{stem}.MatMul"))
        if bias:
            nodes.append(helper.make_node("Add", [mm_out, bias], [out], name=f"{stem}.Add"))
        dropped.update(x for x in (b, s, z) if x)
        lowered += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for node in graph.node for i in node.input}
    keep = [i for i in graph.initializer if i.name not in dropped or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if lowered and not any(n.domain == DOMAIN for n in graph.node):
        kept = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return lowered
