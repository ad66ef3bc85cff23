"""Nothing we ship unpickles: a source scan; and ONNX external data never leaves the model's
directory."""

import ast
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from models import external_data_onnx

import lowrank_compiler as lrc
from lowrank_compiler.runtime.onnx import export as onnx_export

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("lowrank_compiler", "passes", "runtime", "examples", "benchmarks")
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def unsafe_loads(source: str) -> list[str]:
    """Lines of ``source`` that could unpickle: pickle-family imports, torch.load without
    weights_only=True, np.load with allow_pickle, read_pickle, from_pretrained without
    use_safetensors=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + (
                [node.module] if isinstance(node, ast.ImportFrom) else []
            )
            if any(n and n.split(".")[0] in PICKLERS for n in names):
                found.append(f"line {node.lineno}: imports {', '.join(n for n in names if n)}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if (
                name in ("torch.load", "torch.serialization.load")
                and _kw(node, "weights_only") is not True
            ):
                found.append(f"line {node.lineno}: {name} without weights_only=True")
            elif name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") not in (
                None,
                False,
            ):
                found.append(f"line {node.lineno}: {name} with allow_pickle")
            elif name.endswith("read_pickle"):
                found.append(f"line {node.lineno}: {name}")
            elif (
                name.endswith(".from_pretrained")
                and "Tokenizer" not in name
                and _kw(node, "use_safetensors") is not True
            ):
                found.append(f"line {node.lineno}: {name} without use_safetensors=True")
    return found


def test_the_scan_finds_what_it_looks_for():
    bad = (
        "import pickle\nfrom joblib import load\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
        "np.load(f, allow_pickle=True)\npd.read_pickle(f)\nAutoModel.from_pretrained(p)\n"
    )
    assert len(unsafe_loads(bad)) == 7
    good = (
        "torch.load(f, weights_only=True)\nnp.load(f)\nAutoModel.from_pretrained(p, "
        "use_safetensors=True)\n"
        "AutoTokenizer.from_pretrained(p)\nfrom safetensors.torch import load_file\n"
    )
    assert unsafe_loads(good) == []


def test_no_shipped_code_unpickles():
    files = [p for d in SHIPPED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 30
    found = {str(p.relative_to(ROOT)): unsafe_loads(p.read_text()) for p in files}
    assert {k: v for k, v in found.items() if v} == {}


def _external(path: Path, location: str) -> Path:
    path.write_bytes(external_data_onnx(location))
    return path


@pytest.mark.parametrize("where", ["../secret", "absolute", "a/../../secret", "symlink"])
def test_external_data_outside_the_model_directory_is_refused_before_reading(
    tmp_path, monkeypatch, where
):
    (tmp_path / "secret").write_bytes(np.full(16, 7, np.float32).tobytes())
    models = tmp_path / "models"
    models.mkdir()
    location = {"absolute": str(tmp_path / "secret"), "symlink": "w.data"}.get(where, where)
    if where == "symlink":
        (models / "w.data").symlink_to(tmp_path / "secret")
    path = _external(models / "m.onnx", location)

    def no_read(*args, **kwargs):
        raise AssertionError("external data was read")

    monkeypatch.setattr(onnx, "load_external_data_for_model", no_read)
    monkeypatch.setattr(onnxruntime, "InferenceSession", no_read)
    for call in (
        lrc.runtime.load,
        lrc.inspect_onnx,
        lambda p: onnx_export.set_accuracy_level(p, models / "out.onnx", 4),
    ):
        with pytest.raises(lrc.ModelFileError, match="outside the model's directory"):
            call(path)
    assert sorted(p.name for p in models.iterdir()) == sorted(
        ["m.onnx"] + (["w.data"] if where == "symlink" else [])
    )


def test_external_data_inside_the_directory_loads(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.data").write_bytes(np.full(16, 2, np.float32).tobytes())
    path = _external(tmp_path / "m.onnx", "sub/w.data")
    y = lrc.runtime.load(path)(np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(y, np.full((1, 4), 8, np.float32))
