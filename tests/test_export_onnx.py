"""ONNX export: parity with onnxruntime at shapes not seen at export, checker, purity, bad input."""

import numpy as np
import onnx
import pytest
import torch
from models import hf_bert, hf_gpt2, hf_llama, ids, nudged, output, tiny_gpt

import lowrank_compiler as lrc
from lowrank_compiler.runtime import load
from lowrank_compiler.runtime.errors import ExportError

NEW_SHAPES = [(1, 5), (3, 13)]  # export uses (2, 8)


def compiled(build, zero_point="float", hf=False):
    model = build()
    lrc.compile(
        model,
        lrc.Policy(method="qalora", zero_point=zero_point, group_size=16, rank=4),
        example_inputs=(ids(),) if hf else None,
    )
    return nudged(model, scale=0.5, parts=("lora_B",))


def first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def check_parity(model, path, fmt):
    report = lrc.inspect_onnx(path)
    onnx_model = onnx.load(str(path))
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.shape_inference.infer_shapes(onnx_model, check_type=True)
    session = load(path)
    assert session.accuracy_level == 0
    for batch, seq in NEW_SHAPES:
        x = ids(batch, seq, seed=batch * seq)
        with torch.no_grad():
            ref = output(model, x)
        got = first(session(x))
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= 1e-4 * ref.abs().max().item(), (fmt, batch, seq)
    return report


@pytest.fixture(scope="module")
def gpt_float():
    return compiled(tiny_gpt)


@pytest.fixture(scope="module")
def gpt_int():
    return compiled(tiny_gpt, zero_point="int")


CASES = [(fmt, zeros) for fmt in ("matmulnbits", "qdq") for zeros in ("split", "float", "int")]


@pytest.mark.parametrize("fmt, zeros", CASES)
def test_tiny_gpt_parity_every_format_and_zero_mode(gpt_float, gpt_int, tmp_path, fmt, zeros):
    folded = lrc.fold(gpt_int) if zeros == "int" else lrc.fold(gpt_float, zeros=zeros)
    path = lrc.export_onnx(folded, tmp_path / "m.onnx", example_inputs=(ids(),), format=fmt)
    report = check_parity(folded, path, fmt)
    assert report.is_pure_int4, report.problems
    assert report.format == fmt and len(report.targets) == 12
    q = report.layers["blocks.0.attn.q_proj"]
    node = "MatMulNBits" if fmt == "matmulnbits" else "DequantizeLinear+MatMul"
    form = {"int": "int", "split": "split", "float": "float" if fmt == "matmulnbits" else "split"}[
        zeros
    ]
    assert q == f"{node} int4 g16 zeros={form}"
    assert report.layers["lm_head"] == "float MatMul"
    ops = report.ops
    if fmt == "matmulnbits":
        assert ops["com.microsoft::MatMulNBits"] == 12 and "DequantizeLinear" not in ops
    else:
        assert ops["DequantizeLinear"] == 12 and not any(k.startswith("com.microsoft") for k in ops)


@pytest.mark.parametrize(
    "build, fmt, zeros",
    [  # each model: both formats and all three zero-point modes
        (hf_llama, "matmulnbits", "split"),
        (hf_llama, "qdq", "float"),
        (hf_llama, "qdq", "int"),
        (hf_bert, "qdq", "split"),
        (hf_bert, "matmulnbits", "float"),
        (hf_bert, "matmulnbits", "int"),
        (hf_gpt2, "matmulnbits", "split"),  # Conv1D layers: weights stored [in, out]
    ],
)
def test_hf_models_parity(build, fmt, zeros, tmp_path):
    model = compiled(build, zero_point="int" if zeros == "int" else "float", hf=True)
    folded = lrc.fold(model, zeros="split" if zeros == "int" else zeros)
    path = lrc.export_onnx(folded, tmp_path / "m.onnx", example_inputs=(ids(),), format=fmt)
    report = check_parity(folded, path, fmt)
    assert report.is_pure_int4, report.problems


def test_codes_are_copied_not_requantized(gpt_float, tmp_path):
    folded = lrc.fold(gpt_float, zeros="float")
    path = lrc.export_onnx(folded, tmp_path / "m.onnx", example_inputs=(ids(),))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    layer = folded.blocks[1].mlp.down_proj
    assert np.array_equal(inits["blocks.1.mlp.down_proj.qweight"], layer.qweight.numpy())
    assert np.array_equal(inits["blocks.1.mlp.down_proj.scales"], layer.scales.numpy())
    assert np.array_equal(
        inits["blocks.1.mlp.down_proj.zeros"], layer.zeros.numpy()
    )  # float zeros, as stored


def test_unfolded_model_exports_with_adapters_but_is_not_pure(gpt_float, tmp_path):
    path = lrc.export_onnx(gpt_float, tmp_path / "m.onnx", example_inputs=(ids(),))
    report = check_parity(gpt_float, path, "matmulnbits")
    assert not report.is_pure_int4
    assert any("carries a float adapter" in p for p in report.problems)
    with pytest.raises(
        ExportError, match="unfolded qalora adapter; format='qdq' is integer weights only"
    ):
        lrc.export_onnx(gpt_float, tmp_path / "q.onnx", example_inputs=(ids(),), format="qdq")
    assert not (tmp_path / "q.onnx").exists()


def test_float_model_exports_and_is_not_pure(tmp_path):
    model = tiny_gpt()
    path = lrc.export_onnx(model, tmp_path / "f.onnx", example_inputs=(ids(),))
    report = lrc.inspect_onnx(path)
    assert not report.is_pure_int4 and "com.microsoft::MatMulNBits" not in report.ops
    with torch.no_grad():
        np.testing.assert_allclose(
            load(path)(ids(3, 4).numpy()), model(ids(3, 4)).numpy(), atol=1e-5
        )


def test_accuracy_level_is_recorded_and_kept_by_the_session(gpt_float, tmp_path):
    folded = lrc.fold(gpt_float)
    path = lrc.export_onnx(
        folded, tmp_path / "m.onnx", example_inputs=(ids(),), format="qdq", accuracy_level=4
    )
    assert lrc.inspect_onnx(path).accuracy_level == 4
    assert load(path).accuracy_level == 4 and load(path, accuracy_level=0).accuracy_level == 0
    nodes = onnx.load(str(tmp_path / "m.onnx")).graph.node
    assert not any(n.op_type == "MatMulNBits" for n in nodes)


def test_a_foreign_files_level_changes_in_its_graph_alone(gpt_float, tmp_path):
    """set_accuracy_level(foreign=True), for the model builder's files: the MatMulNBits
    attributes change, the weights stay in their data file, byte for byte; a folder without
    that file is refused before anything is written."""
    from lowrank_compiler.runtime.onnx.export import set_accuracy_level

    path = lrc.export_onnx(lrc.fold(gpt_float), tmp_path / "m.onnx", example_inputs=(ids(),))
    model = onnx.load(str(path))
    onnx.save(model, str(tmp_path / "f.onnx"), save_as_external_data=True, location="f.data")
    data = (tmp_path / "f.data").read_bytes()
    set_accuracy_level(tmp_path / "f.onnx", tmp_path / "f.onnx", 4, foreign=True)
    graph = onnx.load(str(tmp_path / "f.onnx"), load_external_data=False).graph
    levels = {
        a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute
        if a.name == "accuracy_level"
    }  # fmt: skip
    assert levels == {4} and (tmp_path / "f.data").read_bytes() == data
    assert np.allclose(
        load(tmp_path / "f.onnx")(ids()), load(path)(ids()), atol=5e-2
    )  # int8 activations: close, not equal
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ExportError, match="lacks the data file"):
        set_accuracy_level(tmp_path / "f.onnx", tmp_path / "elsewhere" / "f.onnx", 0, foreign=True)
    assert not list((tmp_path / "elsewhere").iterdir())


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-dir", "directory .* does not exist"),
        ("bad-input", "torch.onnx export of TinyGPT failed"),
        ("bad-format", "format must be one of"),
        ("bad-level", "accuracy_level must be"),
        ("nf4", "NF4 \\(QLoRA\\) has no ONNX form; fold the model"),
    ],
)
def test_bad_input_leaves_no_file(gpt_float, tmp_path, case, message):
    model, path, kw = lrc.fold(gpt_float), tmp_path / "m.onnx", {}
    if case == "missing-dir":
        path = tmp_path / "nowhere" / "m.onnx"
    if case == "bad-input":
        kw["example_inputs"] = (torch.zeros(2, 8),)  # float ids
    if case == "bad-format":
        kw["format"] = "gguf"
    if case == "bad-level":
        kw["accuracy_level"] = 7
    if case == "nf4":
        model = lrc.compile(tiny_gpt(), lrc.Policy(method="qlora", rank=2))
    kw.setdefault("example_inputs", (ids(),))
    with pytest.raises(ExportError, match=message):
        lrc.export_onnx(model, path, **kw)
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_nothing(gpt_float, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx.checker, "check_model", full_disk)
    with pytest.raises(OSError, match="No space left"):
        lrc.export_onnx(lrc.fold(gpt_float), tmp_path / "m.onnx", example_inputs=(ids(),))
    assert list(tmp_path.iterdir()) == []


def test_export_pass_ends_a_pipeline_with_an_onnx_dump(tmp_path):
    model = hf_bert()
    gm = lrc.trace(model, (ids(),))
    pm = lrc.PassManager(
        f"find-linears,insert-qalora{{rank=2,group_size=16}},fold,"
        f'export-onnx{{path="{tmp_path / "b.onnx"}"}}',
        dump_dir=tmp_path / "dumps",
    )
    pm.run(gm)
    assert lrc.inspect_onnx(tmp_path / "b.onnx").is_pure_int4
    dump = (tmp_path / "dumps" / "04-export-onnx.txt").read_text()
    assert "com.microsoft::MatMulNBits(" in dump and "input input_ids: int64[batch, seq]" in dump
    assert "uint8[" in dump and "float[batch, seq, 32]" in dump


def test_large_models_go_to_external_data(gpt_float, tmp_path, monkeypatch):
    from lowrank_compiler.runtime.onnx import export as onnx_export

    monkeypatch.setattr(onnx_export, "_TWO_GB", 0)  # pretend the model is past protobuf's limit
    folded = lrc.fold(gpt_float)
    path = lrc.export_onnx(folded, tmp_path / "big.onnx", example_inputs=(ids(),))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert lrc.inspect_onnx(path).is_pure_int4
    x = ids(3, 5)
    with torch.no_grad():
        torch.testing.assert_close(load(path)(x), folded(x), rtol=1e-4, atol=1e-4)


def test_eight_bit_float_zeros_export_in_the_exact_split_form(tmp_path):
    """onnxruntime's CPU MatMulNBits refuses float zero points at 8 bits; the export writes
    those layers as integer zeros + correction, so the file loads and computes the same."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 24))
    lrc.compile(model, lrc.Policy(method="qalora", target=["0"], bits=8, group_size=16, rank=2))
    deployed = lrc.fold(nudged(model, scale=0.5, parts=("lora_B",)), zeros="float")
    assert deployed[0].float_zeros
    path = lrc.export_onnx(deployed, tmp_path / "m.onnx", example_inputs=(torch.randn(2, 64),))
    node = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits")
    zeros = next(t for t in onnx.load(str(path)).graph.initializer if t.name == node.input[3])
    assert zeros.data_type == onnx.TensorProto.UINT8
    x = torch.randn(5, 64)
    with torch.no_grad():
        want = deployed(x)
    got = load(path)(x)
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    assert deployed[0].float_zeros  # the model itself is left as it was


def test_split_fold_leaves_out_corrections_that_are_exactly_zero(tmp_path):
    """Folded before training, every moved zero point is the integer it was: no layer needs a
    correction, and the file is the bare MatMulNBits graph. One trained layer brings back one."""
    model = hf_llama()
    x = ids()
    lrc.compile(model, lrc.Policy(method="qalora", group_size=16, rank=4), example_inputs=(x,))

    def ops(source, name):
        path = lrc.export_onnx(lrc.fold(source), tmp_path / f"{name}.onnx", example_inputs=(x,))
        kinds = [n.op_type for n in onnx.load(str(path)).graph.node]
        return {op: kinds.count(op) for op in ("MatMulNBits", "ReduceSum", "MatMul")}

    untrained = ops(model, "untrained")  # MatMul: attention and the float head only
    assert untrained["MatMulNBits"] == 14 and untrained["ReduceSum"] == 0
    layer = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    assert ops(model, "one-trained") == {
        "MatMulNBits": 14,
        "ReduceSum": 1,
        "MatMul": untrained["MatMul"] + 1,
    }
