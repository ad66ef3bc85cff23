"""ONNX pass share-table-codes: a tied INT4 table reads its head's codes, stored once."""

import torch
from onnx_graphs import int_linear, ops, relative, run
from torch import nn

from lowrank_compiler.runtime.layers import IntEmbedding
from lowrank_compiler.runtime.onnx.export import export_proto
from lowrank_compiler.runtime.onnx.passes import verify
from lowrank_compiler.runtime.onnx.share_tables import share_table_codes


class Tied(nn.Module):
    """ids -> table lookup -> head over the same codes (a tied decoder in two modules)."""

    def __init__(self):
        super().__init__()
        self.head = int_linear(32, 40, group=16)
        self.table = IntEmbedding.lent_by(self.head)

    def forward(self, ids):
        return self.head(self.table(ids))


def test_the_table_copy_is_dropped_for_a_reshape_of_the_head_codes():
    model = Tied()
    ids = torch.randint(0, 40, (2, 5))
    batch = {0: torch.export.Dim("batch")}
    proto = export_proto(model, (ids,), dynamic_shapes=(batch,), stage=[])  # as torch gave it
    copies = len(proto.graph.initializer)
    result = share_table_codes(proto)
    assert result.modified and result.stats == {"shared": 1}
    assert len(result.model.graph.initializer) == copies  # one table of codes less, one shape more
    assert ops(result.model).get("Reshape", 0) == 1
    verify(result.model)
    assert relative(run(result.model, ids.numpy())[0], model(ids).double().numpy()) < 1e-6
    assert not share_table_codes(result.model).modified  # nothing left to share
