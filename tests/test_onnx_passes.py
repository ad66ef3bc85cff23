"""The ONNX stage's contract: registered passes, a verifier after each, numbered dumps in the
same directory as the FX passes', and a typed error naming the failing pass."""

import onnx
import pytest
import torch
from onnx_graphs import int_linear
from torch import nn

import lowrank_compiler as lrc
from lowrank_compiler.runtime.onnx.export import export_proto
from lowrank_compiler.runtime.onnx.passes import _REGISTRY as REGISTRY
from lowrank_compiler.runtime.onnx.passes import (
    OnnxPassError,
    OnnxPassResult,
    OnnxPassSpec,
    register_onnx_pass,
    registered_onnx_passes,
    run_onnx_passes,
)


def small():
    model = nn.Sequential(int_linear(n=32), nn.ReLU(), int_linear(32, 8, seed=1))
    return export_proto(
        model, (torch.randn(2, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},), stage=[]
    )


@pytest.fixture
def broken_pass():
    @register_onnx_pass("drop-first-node", "removes the first node: leaves a dangling input")
    def drop(model, *, keep=0):
        del model.graph.node[0]
        return OnnxPassResult(model, True, {"dropped": 1})

    yield
    REGISTRY.pop("drop-first-node")


def test_the_built_in_passes_are_registered_with_a_summary():
    passes = registered_onnx_passes()
    assert {"share-table-codes", "split-form", "lower-to-qdq", "fuse-skip-norm"} <= set(passes)
    assert all(info.summary for info in passes.values())
    assert passes["split-form"].options == {"format": "qdq"}


def test_a_pass_that_breaks_the_graph_is_named_by_the_verifier(broken_pass):
    specs = [OnnxPassSpec("share-table-codes"), OnnxPassSpec("drop-first-node")]
    with pytest.raises(OnnxPassError) as e:
        run_onnx_passes(small(), specs)
    assert e.value.pass_name == "drop-first-node" and e.value.before == ("share-table-codes",)
    assert "ONNX pass 'drop-first-node', step 2 of 2 (after share-table-codes), failed" in str(
        e.value
    )


def test_unknown_passes_and_options_are_errors():
    with pytest.raises(
        OnnxPassError, match="unknown ONNX pass 'no-such-pass'; registered: .*split-form"
    ):
        run_onnx_passes(small(), [OnnxPassSpec("no-such-pass")])
    with pytest.raises(
        OnnxPassError, match=r"no option\(s\) \['bits'\]; its options are \['format'\]"
    ):
        run_onnx_passes(small(), [OnnxPassSpec("split-form", {"bits": [8]})])


def test_an_export_dumps_its_onnx_stage_after_the_fx_dumps(tmp_path):
    x = torch.randn(2, 5, 64)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    compiled = lrc.compile(
        model,
        lrc.Policy(method="qalora", group_size=16, rank=4),
        example_inputs=(x,),
        dump_dir=tmp_path,
    )
    folded = lrc.fold(compiled, zeros="float", dump_dir=tmp_path)
    lrc.export_onnx(folded, tmp_path / "m.onnx", format="qdq", dump_dir=tmp_path)
    names = sorted(p.stem for p in tmp_path.glob("[0-9][0-9]-*.txt"))
    assert names == [
        "00-trace",
        "01-find-linears",
        "02-insert-qalora",
        "03-fold",
        "04-onnx-as-exported",
        "05-share-table-codes",
        "06-split-form",
        "07-lower-to-qdq",
    ]
    split = (tmp_path / "06-split-form.txt").read_text()
    assert split.startswith("// after ONNX pass split-form{format=qdq}")
    assert (
        "modified: yes" in split and "nodes: +" in split and "com.microsoft::MatMulNBits(" in split
    )
    page = (tmp_path / "07-lower-to-qdq.html").read_text()
    assert page.count('class="added"') >= 2 and "DequantizeLinear" in page
    index = (tmp_path / "index.html").read_text()
    assert all(f"{n}.html" in index for n in names)
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)


def test_a_pipeline_that_exports_numbers_the_onnx_passes_after_the_export(tmp_path):
    x = torch.randn(2, 5, 64)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    gm = lrc.trace(model, (x,))
    path = tmp_path / "m.onnx"
    lrc.PassManager(
        f'find-linears,quantize{{group_size=16}},export-onnx{{path="{path}"}}',
        dump_dir=tmp_path / "d",
    ).run(gm)
    names = sorted(p.stem for p in (tmp_path / "d").glob("[0-9][0-9]-*.txt"))
    assert names == [
        "00-trace",
        "01-find-linears",
        "02-quantize",
        "03-export-onnx",
        "04-onnx-as-exported",
        "05-share-table-codes",
        "06-split-form",
    ]
    assert lrc.inspect_onnx(path).is_pure_int4
