"""Layer drawings on the dump pages: what each pass did to a layer, as an SVG of its nodes.

The FX passes draw the layers they rewrote, one per kind (a deep model draws as many as a
shallow one); the ONNX stage draws the quantized layers as exported, then what each ONNX pass
fused (q/k/v into one MatMulNBits); any layer draws on demand (``layer_svg``); text from the
graph is escaped."""

from __future__ import annotations

import html
import re

import pytest
import torch
from models import VOCAB, tiny_gpt

import lowrank_compiler as lrc
from lowrank_compiler.app.toy import GPTConfig, TinyGPT
from lowrank_compiler.dump_draw import draw_nodes
from lowrank_compiler.dump_ops import Op, fx_ops
from lowrank_compiler.dump_select import rewritten_layers
from lowrank_compiler.passes.helpers import graph as G

ATTR = re.compile(r'<g class="node [a-z]+" data-node="([^"]*)">')


def figures(page) -> list[str]:
    return re.findall(r'<figure class="layer".*?</figure>', page.read_text(), re.S)


def svgs(figure: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", figure, re.S)


def texts(svg: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


@pytest.mark.parametrize("layers", [2, 6])
def test_a_pass_draws_each_rewritten_layer_kind_once(tmp_path, layers):
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=VOCAB, n_embd=32, n_head=4, n_layer=layers)).eval()
    lrc.compile(
        model, lrc.Policy(method="qalora", bits=4, group_size=16, rank=4), dump_dir=tmp_path
    )
    found = figures(tmp_path / "02-insert-qalora.html")
    assert len(found) == 1  # q, k, v, o, up and down: one kind, however deep the model
    assert f"and {6 * layers - 1} more layers of its kind" in found[0]
    before, after = svgs(found[0])
    assert ATTR.findall(before) == ["blocks_0_attn_q_proj"]
    assert "Linear [32->32]" in texts(before)
    shown = texts(after)
    assert any(t.startswith("IntLinear (bits 4, group_size 16)") for t in shown)
    assert {"lora_A", "lora_B"} <= set(shown)  # the adapter's tensors, named


def test_the_fold_page_shows_the_integer_layer_it_became(tmp_path):
    model = lrc.compile(
        tiny_gpt(), lrc.Policy(method="lrqat", bits=4, group_size=16, rank=4), dump_dir=tmp_path
    )
    lrc.fold(model, dump_dir=tmp_path)
    before, after = svgs(figures(tmp_path / "03-fold.html")[0])
    assert "lrqat_linear" in texts(before) and "lora_A" in texts(before)
    assert ATTR.findall(after) == ["blocks_0_attn_q_proj"]
    shown = texts(after)
    assert any(t.startswith("IntLinear (bits 4") for t in shown) and "lora_A" not in shown
    assert any(t.startswith("qweight u8[32,") for t in shown)
    index = (tmp_path / "index.html").read_text()
    assert '<img src="03-fold.before.svg"' in index and '<img src="03-fold.after.svg"' in index


def test_the_drawn_nodes_are_the_layers_nodes_in_the_graph(tmp_path):
    model = lrc.compile(tiny_gpt(), lrc.Policy(method="lora", rank=4))
    graph = lrc.compile_info(model).graph
    layer = "blocks.1.mlp.up_proj"
    want = sorted(n.name for n in graph.graph.nodes if n.meta.get(G.ADAPTER) == layer)
    svg = lrc.layer_svg(model, layer)
    assert sorted(ATTR.findall(svg)) == want and len(want) == 8
    with pytest.raises(ValueError, match="no layer 'blocks.9.mlp'.*blocks.0"):
        lrc.layer_svg(model, "blocks.9.mlp")


def test_shape_arithmetic_is_left_out(tmp_path):
    """QA-LoRA pools x by group (``x.shape[-1] // g``): the sizes are not drawn as operators."""
    model = lrc.compile(tiny_gpt(), lrc.Policy(method="qalora", bits=4, group_size=16, rank=4))
    svg = lrc.layer_svg(model, "blocks.0.attn.q_proj")
    shown = texts(svg)
    assert "getattr" not in shown and "floordiv" not in shown and "getitem" not in shown
    assert "mean" in shown  # the pooling itself is


def test_the_onnx_stage_draws_the_quantized_layer_and_the_qkv_fusion(tmp_path):
    from test_genai import VOCAB, _quiet, llama

    _quiet()
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    model = lrc.compile(
        llama().eval(), lrc.Policy(method="rtn", bits=4, group_size=32), example_inputs=(ids,)
    )
    lrc.export_genai(model, tmp_path / "out", dump_dir=tmp_path / "d")
    (exported,) = svgs(figures(tmp_path / "d" / "00-onnx-as-exported.html")[0])
    assert texts(exported)[0] == "after" and "MatMulNBits" in texts(exported)
    fused = figures(tmp_path / "d" / "03-fuse-qkv.html")
    assert len(fused) == 1 and "and 1 more layers of its kind" in fused[0]  # two decoder layers
    before, after = svgs(fused[0])
    assert texts(before).count("MatMulNBits") == 3 and texts(after).count("MatMulNBits") == 1
    assert (
        texts(before).count("GroupQueryAttention") == 1 == texts(after).count("GroupQueryAttention")
    )
    assert any(t.startswith("qweight u8[128,") for t in texts(after))  # q 64 + k 32 + v 32 rows


def test_text_from_the_graph_is_escaped_in_drawings():
    ops = [
        Op("x", "placeholder", (), "io", (), ""),
        Op("a<b", "<script>alert(1)</script>", ("w f32[2]",), "op", ("x",), "L&M"),
    ]
    svg = draw_nodes(ops, {"a<b"})
    assert "<script>" not in svg and "&lt;script&gt;" in svg and 'data-node="a&lt;b"' in svg
    bell = draw_nodes([Op("n\x07", "Op\x00", (), "op", (), "L")], {"n\x07"})
    assert "\x07" not in bell and "\x00" not in bell  # not even escaped: the file stays XML


def test_unchanged_passes_draw_nothing():
    ops = fx_ops(lrc.trace(tiny_gpt()))
    assert rewritten_layers(ops, ops, {"added": [], "removed": [], "rewritten": []}) == []


def test_the_split_form_page_draws_the_float_zero_layer_and_its_correction(tmp_path):
    """split-form replaces each float-zero MatMulNBits by new nodes (an integer-zero one and
    the correction): drawn as one layer, before and after, though no node keeps its name."""
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    model = lrc.compile(
        tiny_gpt(),
        lrc.Policy(method="qalora", bits=4, group_size=16, rank=4),
        example_inputs=(ids,),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(generator=torch.Generator().manual_seed(1))
    folded = lrc.fold(model, zeros="float")
    lrc.export_onnx(
        folded, tmp_path / "m.onnx", example_inputs=(ids,), format="qdq", dump_dir=tmp_path
    )
    (page,) = tmp_path.glob("*-split-form.html")
    found = figures(page)
    assert len(found) == 1 and "<b>blocks.<wbr>0.<wbr>attn.<wbr>q_<wbr>proj</b>" in found[0]
    before, after = svgs(found[0])
    assert texts(before).count("MatMulNBits") == 1 and "zeros f32[32, 2]" in texts(before)
    shown = texts(after)
    assert shown.count("MatMulNBits") == 1 and "correction f32[2, 32]" in shown
    assert "ReduceSum" in shown and "Add" in shown  # the groups' sums, then onto the output


def test_nodes_a_pass_inserted_show_their_output_shapes():
    """The traced nodes carry their shapes; the ones a pass inserted get theirs from fake
    tensors: QA-LoRA pools K = 32 inputs into 32 / 16 = 2 groups, A maps them to rank 4."""
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    policy = lrc.Policy(method="qalora", bits=4, group_size=16, rank=4)
    model = lrc.compile(tiny_gpt(), policy, example_inputs=(ids,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    shown = texts(lrc.layer_svg(model, "blocks.0.attn.q_proj"))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # meta only
    mean = shown.index("mean")
    assert shown[mean + 1 : mean + 3] == ["-1", "-> f32[2, 8, 2]"]  # per group: (B, T, K / g)
    assert "-> f32[2, 8, 4]" in shown and shown[-2:] == ["-> f32[2, 8, 32]", "view"]


def test_a_graph_that_cannot_be_drawn_still_gets_its_dump(tmp_path, monkeypatch):
    import lowrank_compiler.dumps as dumps

    def broken(gm):
        raise RuntimeError("unreadable")

    monkeypatch.setattr(dumps, "fx_ops", broken)
    lrc.compile(tiny_gpt(), lrc.Policy(method="lora", rank=4), dump_dir=tmp_path)
    page = (tmp_path / "02-insert-lora.html").read_text()
    assert "could not be read for drawing" in page and 'id="n-blocks_0_attn_q_proj_add"' in page
