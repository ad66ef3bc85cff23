"""Model Explorer overlays: node data keyed by the ids Model Explorer gives the graph it shows (the
exported program's node names, the ONNX node names), every layer a pass changed coloured with that
pass, the latest pass winning; the viewer and ``dump --view`` without starting a server."""

import json
import re
import shutil
import sys
from pathlib import Path

import onnx
import pytest
from models import ids, tiny_gpt

import lowrank_compiler as lrc
from lowrank_compiler.app.cli import main
from lowrank_compiler.dump_explorer import (
    FILES,
    INSTALL,
    ViewerMissingError,
    overlay,
    program,
    view,
    write_overlays,
)
from lowrank_compiler.passes.helpers import graph as G
from lowrank_compiler.runtime.layers.protocol import AdapterLayer

FACTORIES = Path(__file__).resolve().parent / "factories.py"
NODE_DATA = {  # GraphNodeData's fields (model_explorer/node_data_builder.py)
    "results",
    "name",
    "thresholds",
    "gradient",
    "hideInAggregatedStatsTable",
    "hideInChildrenStatsTable",
    "hideAggregatedStats",
    "showExpandedSummaryOnGroupNode",
    "showLabelCountColumnsInChildrenStatsTable",
}
RESULT = {"value", "bgColor", "textColor"}  # NodeDataResult's


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    model = lrc.compile(
        tiny_gpt(), lrc.Policy(method="lora", rank=4, alpha=8), example_inputs=(ids(),), dump_dir=d
    )
    return d, model, program(model)


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    """QA-LoRA, folded, exported twice: MatMulNBits (no ONNX pass changes anything) and QDQ
    (split-form and lower-to-qdq add nodes), each beside its own copy of the FX dumps."""
    root = tmp_path_factory.mktemp("folded")
    policy = lrc.Policy(method="qalora", rank=4, alpha=8, group_size=16)
    model = lrc.compile(tiny_gpt(), policy, example_inputs=(ids(),), dump_dir=root / "fx")
    model = lrc.fold(model, zeros="float", dump_dir=root / "fx")
    for fmt in ("matmulnbits", "qdq"):
        shutil.copytree(root / "fx", root / fmt)
        lrc.export_onnx(model, root / f"{fmt}.onnx", format=fmt, dump_dir=root / fmt)
    return root, model


def _check_node_data(data: dict, graph_id: str, node_ids: set[str]) -> dict:
    """``data`` is Model Explorer node data for one graph; returns its results."""
    assert list(data) == [graph_id]
    assert set(data[graph_id]) <= NODE_DATA
    results = data[graph_id]["results"]
    assert results and set(results) <= node_ids
    for r in results.values():
        assert set(r) <= RESULT and isinstance(r["value"], str)
        assert re.fullmatch(r"#[0-9a-f]{6}", r["bgColor"])
    return results


def _module_of(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _header(path: Path, sign: str) -> list[str]:
    return re.findall(rf"^//   \{sign} (\S+)", path.read_text(), re.M)


# --- a compiled PyTorch model --------------------------------------------------------------


def test_torch_overlay_is_node_data_keyed_by_the_exported_graphs_names(lora):
    d, _, ep = lora
    names = {n.name for n in ep.graph.nodes}
    results = _check_node_data(overlay(d, ep), "graph", names)
    assert {r["value"] for r in results.values()} == {
        "02 insert-lora: added",
        "02 insert-lora: rewritten",
    }
    assert len({r["bgColor"] for r in results.values()}) == 2  # rewritten: a lighter shade
    # an nn.Module is exported the same way
    assert overlay(d, lora[1]) == overlay(d, ep)


def test_every_layer_the_pass_changed_is_coloured_with_it(lora):
    d, model, ep = lora
    results = overlay(d, ep)["graph"]["results"]
    adapters = {n for n, m in model.named_modules() if isinstance(m, AdapterLayer)}
    gm = lrc.compile_info(model).graph
    nodes = {n.name: n for n in gm.graph.nodes}
    added = _header(d / "02-insert-lora.txt", "+")
    assert {nodes[n].meta[G.ADAPTER] for n in added} == adapters  # each added node's layer
    for layer in adapters:
        inside = [n.name for n in ep.graph.nodes if (_module_of(n) + ".").startswith(layer + ".")]
        assert inside and all(results[n]["value"] == "02 insert-lora: added" for n in inside)
    # the nodes that read a rewritten layer, as many as the pass rewrote in its own graph
    readers = [n for n, r in results.items() if r["value"].endswith("rewritten")]
    assert len(readers) == len(_header(d / "02-insert-lora.txt", "~")) == 12
    assert "view" in readers  # reads blocks.0.attn.q_proj
    assert not {"embedding", "layer_norm", "scaled_dot_product_attention"} & set(results)


def test_report_overlay_carries_the_layers_report_lines(lora, folded):
    d, _, ep = lora  # insert-lora reports nothing per layer: the value says what it did
    results = overlay(d, ep, label="report")["graph"]["results"]
    assert results["p_blocks_0_attn_q_proj_lora_a"]["value"] == "02 insert-lora: added"
    assert results["view"]["value"] == (
        "02 insert-lora: reads blocks.0.attn.q_proj, which it changed"
    )
    root, model = folded  # fold reports each layer's error
    ep = program(model)
    results = overlay(root / "fx", ep, label="report")["graph"]["results"]
    report = re.findall(
        r"^//   (blocks\.0\.attn\.q_proj: .+)$", (root / "fx" / "03-fold.txt").read_text(), re.M
    )
    node = next(n.name for n in ep.graph.nodes if _module_of(n) == "blocks.0.attn.q_proj")
    assert results[node]["value"] == f"03 fold: {report[0]}"


def test_the_latest_pass_wins(folded):
    root, model = folded
    ep = program(model)
    results = _check_node_data(overlay(root / "fx", ep), "graph", {n.name for n in ep.graph.nodes})
    int_linears = [n.name for n in ep.graph.nodes if "int_linear" in str(n.target)]
    assert len(int_linears) == 12
    assert all(results[n]["value"] == "03 fold: added" for n in int_linears)
    assert not any(r["value"].startswith("02") for r in results.values())


def test_write_overlays_writes_both_files(lora, tmp_path):
    d, _, ep = lora
    paths = write_overlays(d, ep, tmp_path / "out")
    assert [p.name for p in paths] == list(FILES.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(FILES.values())
    assert json.loads(paths[0].read_text()) == overlay(d, ep)
    assert json.loads(paths[1].read_text()) == overlay(d, ep, label="report")


# --- an ONNX file --------------------------------------------------------------------------


def test_onnx_overlay_is_keyed_by_the_onnx_node_names(folded):
    root, _ = folded
    model = onnx.load(str(root / "matmulnbits.onnx"))
    names = {n.name for n in model.graph.node}
    results = _check_node_data(
        overlay(root / "matmulnbits", root / "matmulnbits.onnx"), model.graph.name, names
    )
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(matmuls) == 12
    assert all(results[n]["value"] == "03 fold: added" for n in matmuls)
    assert results["node_view"]["value"] == "03 fold: rewritten"  # reads q_proj
    assert "node_layer_norm" not in results


def test_onnx_passes_mark_their_own_nodes(folded):
    root, _ = folded
    model = onnx.load(str(root / "qdq.onnx"))
    results = _check_node_data(
        overlay(root / "qdq", model), model.graph.name, {n.name for n in model.graph.node}
    )
    [page] = (root / "qdq").glob("*-lower-to-qdq.txt")
    added = _header(page, "+")
    assert len(added) == 36
    number = page.name[:2]
    assert all(results[n]["value"] == f"{number} lower-to-qdq: added" for n in added)
    # their nodes read the layer's tensors: the layer's readers still carry fold's mark
    assert results["node_view"]["value"] == "03 fold: rewritten"


def test_an_unnamed_onnx_node_gets_the_adapters_id(folded):
    root, _ = folded
    model = onnx.load(str(root / "matmulnbits.onnx"))
    i = next(i for i, n in enumerate(model.graph.node) if n.op_type == "MatMulNBits")
    model.graph.node[i].name = ""
    model.graph.name = ""
    results = overlay(root / "matmulnbits", model)["<main>"]["results"]
    assert results[f"<node_{i}>"]["value"] == "03 fold: added"


# --- bad input -----------------------------------------------------------------------------


def test_bad_input_names_what_would_work(lora, tmp_path):
    d, _, ep = lora
    with pytest.raises(ValueError, match="no pass dumps .*dump_dir"):
        overlay(tmp_path, ep)
    with pytest.raises(ValueError, match=r"not an \.onnx file"):
        overlay(d, d / "02-insert-lora.txt")
    with pytest.raises(ValueError, match="label must be one of"):
        overlay(d, ep, label="colour")
    with pytest.raises(TypeError, match="got int"):
        overlay(d, 42)
    with pytest.raises(ValueError, match="example_inputs"):
        program(tiny_gpt())


def test_view_without_model_explorer_says_what_to_install(lora, monkeypatch):
    monkeypatch.setitem(sys.modules, "model_explorer", None)  # import fails as if not installed
    with pytest.raises(ViewerMissingError, match=re.escape(INSTALL)) as e:
        view(lora[2], lora[0])
    assert isinstance(e.value, ImportError)


# --- Model Explorer itself (the view extra) ------------------------------------------------


def test_model_explorers_pytorch_adapter_finds_every_id(lora):
    explorer = pytest.importorskip("model_explorer")
    from model_explorer.consts import DEFAULT_SETTINGS
    from model_explorer.node_data_builder import GraphNodeData, ModelNodeData, NodeDataResult
    from model_explorer.pytorch_exported_program_adapter_impl import (
        PytorchExportedProgramAdapterImpl,
    )

    d, _, ep = lora
    [graph] = PytorchExportedProgramAdapterImpl(ep, DEFAULT_SETTINGS).convert()["graphs"]
    for label in FILES:
        data = overlay(d, ep, label=label)
        [(graph_id, node_data)] = data.items()
        assert graph_id == graph.id and set(node_data["results"]) <= {n.id for n in graph.nodes}
        # Model Explorer's own node data classes take every field and write the same JSON
        results = {k: NodeDataResult(**v) for k, v in node_data["results"].items()}
        built = GraphNodeData(**{**node_data, "results": results})
        written = json.loads(ModelNodeData({graph_id: built}).to_json_string())[graph_id]
        assert {k: written[k] for k in node_data} == node_data
    assert explorer.config is not None


def test_model_explorers_onnx_adapter_finds_every_id(folded):
    pytest.importorskip("model_explorer")
    pytest.importorskip("model_explorer_onnx")
    from model_explorer_onnx.main import ONNXAdapter

    root, _ = folded
    for fmt in ("matmulnbits", "qdq"):
        path = root / f"{fmt}.onnx"
        graph = ONNXAdapter().convert(str(path), {"const_element_count_limit": 16})["graphs"][0]
        [(graph_id, data)] = overlay(root / fmt, path).items()
        assert graph_id == graph.id
        assert data["results"] and set(data["results"]) <= {n.id for n in graph.nodes}


@pytest.fixture
def served(monkeypatch):
    """Model Explorer with ``visualize_from_config`` recording its call instead of serving."""
    explorer = pytest.importorskip("model_explorer")
    calls = []
    monkeypatch.setattr(explorer, "visualize_from_config", lambda c, **kw: calls.append((c, kw)))
    return calls


def test_view_gives_model_explorer_the_model_and_both_overlays(lora, folded, served, tmp_path):
    d, model, _ = lora
    view(model, d, out_dir=tmp_path, port=8123, open_browser=False)
    config, kw = served[-1]
    assert kw == {
        "host": "localhost",
        "port": 8123,
        "extensions": [],
        "no_open_in_browser": True,
    }
    assert config.model_sources == [{"url": "graphs://TinyGPT/0"}]
    [graph] = config.graphs_list[0]["graphs"]
    assert config.node_data_sources == [str((tmp_path / f).resolve()) for f in FILES.values()]
    ids_ = {n.id for n in graph.nodes}
    for f in FILES.values():
        assert set(json.loads((tmp_path / f).read_text())["graph"]["results"]) <= ids_
    pytest.importorskip("model_explorer_onnx")
    root, _ = folded
    view(root / "qdq.onnx", root / "qdq", open_browser=False)
    config, kw = served[-1]
    assert kw["extensions"] == ["model_explorer_onnx"]
    assert config.model_sources == [{"url": str((root / "qdq.onnx").resolve())}]
    assert (root / "qdq" / FILES["pass"]).is_file()


# --- the command line ----------------------------------------------------------------------


def _dump(tmp_path, *flags) -> tuple[int, Path]:
    (tmp_path / "policy.json").write_text(json.dumps({"method": "lora", "rank": 4, "alpha": 8}))
    out = tmp_path / "dumps"
    args = ["dump", f"{FACTORIES}:gpt", "--policy", tmp_path / "policy.json", "--out", out]
    return main([str(a) for a in [*args, "--quiet", *flags]]), out


def test_cli_overlay_only_writes_the_overlays_with_the_dumps(tmp_path):
    code, out = _dump(tmp_path, "--overlay-only")
    assert code == 0
    assert {*FILES.values(), "02-insert-lora.html", "pipeline.txt"} <= {
        p.name for p in out.iterdir()
    }
    data = json.loads((out / FILES["pass"]).read_text())
    assert {r["value"] for r in data["graph"]["results"].values()} == {
        "02 insert-lora: added",
        "02 insert-lora: rewritten",
    }


def test_cli_view_without_model_explorer_fails_before_building(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "model_explorer", None)
    code, out = _dump(tmp_path, "--view")
    err = capsys.readouterr().err
    assert code == 2 and INSTALL in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_view_serves_the_compiled_model(tmp_path, served):
    code, out = _dump(tmp_path, "--view", "--port", "8124", "--no-browser")
    assert code == 0
    config, kw = served[-1]
    assert kw["port"] == 8124 and kw["no_open_in_browser"] is True
    assert config.node_data_sources == [str((out / f).resolve()) for f in FILES.values()]
