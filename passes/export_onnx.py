"""export-onnx: end a pipeline in an ONNX file (``helpers.export.export_file``); the graph is
unchanged.

The model exported is the one the graph views, with the example inputs it was traced with
(``trace_mode="export"``: compile with ``example_inputs``), and the layers find-linears
selected as the file's targets. ``lrc.export_onnx`` is this same export for a model in hand.
Under a pass manager with dumps, the ONNX stage's passes write their own numbered dumps after
this one; this pass's dump lists every ONNX node with its input and output dtypes and shapes.
"""

from __future__ import annotations

import torch.fx as fx

from ..runtime.errors import PolicyError
from ..runtime.onnx.inspection import inspect_onnx, op_listing
from .helpers import graph as G
from .helpers.export import export_file
from .registry import PassResult, register_pass


@register_pass(
    "export-onnx", "write the model to an ONNX file (MatMulNBits or standard QDQ), graph unchanged"
)
def export_onnx(
    gm: fx.GraphModule,
    *,
    path=None,
    format="matmulnbits",
    accuracy_level=0,
    dynamic=True,
    embeddings="float",
    embedding_group_size=32,
    dtype="float32",
) -> PassResult:
    if not path:
        raise PolicyError("export-onnx needs path=<file.onnx>")
    example = gm.meta.get(G.EXAMPLE)
    if example is None:
        raise PolicyError(
            "export-onnx needs the example inputs the model was traced with: compile with "
            "example_inputs=(...), or call lowrank_compiler.export_onnx directly"
        )
    args, kwargs = example
    written = export_file(
        G.model_of(gm),
        path,
        args=args,
        kwargs=kwargs,
        targets=G.selected_targets(gm.meta.get(G.LINEARS, [])),
        format=format,
        accuracy_level=accuracy_level,
        dynamic=dynamic,
        embeddings=embeddings,
        embedding_group_size=embedding_group_size,
        dtype=dtype,
        dump=gm.meta.get(G.DUMPS),
    )
    report = inspect_onnx(written)
    stats = {"path": str(written), "pure_int4": report.is_pure_int4, "ops": report.ops}
    return PassResult(gm, False, stats, op_listing(written))
