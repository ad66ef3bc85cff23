"""Integrity of what we write: an ONNX file's metadata records the sha256 of its weights, a genai
folder's ``lowrank_compiler.json`` that of every file; ``runtime.load(..., verify=True)`` and
``lowrank-compiler inspect --verify`` recompute them and refuse a changed file, naming it.

Without verification a flipped bit inside the weights loads and computes something else silently:
the first test shows that, so that the check stays worth its cost.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from models import ids, tiny_gpt
from test_cli import one_line_error, run_main

import lowrank_compiler as lrc
from lowrank_compiler.app.pretrained import load_stories260k
from lowrank_compiler.genai import export_genai
from lowrank_compiler.runtime.errors import ModelFileError
from lowrank_compiler.runtime.onnx.integrity import DIGEST, verify_file, weights_digest
from lowrank_compiler.runtime.quant.formats import FOLDER_RECORD, METADATA_KEY


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    x = ids()
    model = lrc.compile(tiny_gpt(), lrc.Policy(method="rtn"), example_inputs=(x,))
    return lrc.export_onnx(model, tmp_path_factory.mktemp("file") / "m.onnx"), x


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    model, tok = load_stories260k()
    prompt = tok("Once upon a time", return_tensors="pt").input_ids
    lrc.compile(model, lrc.Policy(method="rtn"), example_inputs=(prompt,))
    out = export_genai(
        model, tmp_path_factory.mktemp("g") / "genai", accuracy_level=0, tokenizer=tok
    )
    return out, prompt


def flip_weight_bit(path) -> str:
    """Flip one bit in the middle of the largest INT4 code tensor in the file; returns its name."""
    model = onnx.load(str(path))
    codes = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    t = max(codes, key=lambda t: len(t.raw_data))
    data = bytearray(path.read_bytes())
    at = data.find(t.raw_data)
    assert at >= 0 and data.find(t.raw_data, at + 1) < 0
    data[at + len(t.raw_data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return t.name


def copy_of(src, tmp_path):
    dst = tmp_path / src.name
    if src.is_dir():
        import shutil

        shutil.copytree(src, dst)
    else:
        dst.write_bytes(src.read_bytes())
    return dst


def test_a_flipped_weight_bit_loads_silently_without_verify_and_is_refused_with_it(
    onnx_file, tmp_path
):
    path, x = onnx_file
    want = lrc.runtime.load(path)(x.numpy())
    damaged = copy_of(path, tmp_path)
    flip_weight_bit(damaged)
    got = lrc.runtime.load(damaged)(x.numpy())  # loads and runs: the damage is silent
    assert not np.array_equal(got, want)
    with pytest.raises(ModelFileError, match=r"m\.onnx.*weights changed since it was written"):
        lrc.runtime.load(damaged, verify=True)
    assert np.array_equal(lrc.runtime.load(path, verify=True)(x.numpy()), want)


def test_the_recorded_digest_is_of_the_weights_not_of_how_they_are_stored(onnx_file, tmp_path):
    path, _ = onnx_file
    recorded = json.loads(
        next(p.value for p in onnx.load(str(path)).metadata_props if p.key == METADATA_KEY)
    )[DIGEST]
    assert recorded == weights_digest(onnx.load(str(path))) == verify_file(path)
    model = onnx.load(str(path))
    external = tmp_path / "ext" / "m.onnx"
    external.parent.mkdir()
    onnx.save_model(
        model, str(external), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    assert verify_file(external) == recorded  # the same weights, stored beside the graph


def test_a_file_without_a_digest_is_refused_by_verify(onnx_file, tmp_path):
    path, _ = onnx_file
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save_model(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelFileError, match="records no weights digest"):
        lrc.runtime.load(tmp_path / "bare.onnx", verify=True)
    lrc.runtime.load(tmp_path / "bare.onnx")  # without verify it is only a file


def test_the_folder_records_every_files_digest(folder):
    out, prompt = folder
    record = json.loads((out / FOLDER_RECORD).read_text())
    assert set(record["sha256"]) == set(record["files"]) >= {"model.onnx", "genai_config.json"}
    assert "tokenizer.json" in record["sha256"]
    assert lrc.runtime.check_integrity(out) == sorted(record["files"])
    session = lrc.runtime.load(out, verify=True)
    assert session.generate(prompt, max_new_tokens=4).shape == (1, prompt.shape[1] + 4)


@pytest.mark.parametrize("damage", ["weights", "config", "missing"])
def test_a_changed_folder_file_is_named(folder, tmp_path, damage):
    out = copy_of(folder[0], tmp_path)
    if damage == "weights":
        flip_weight_bit(out / "model.onnx")
        name, why = "model.onnx", "changed since it was written"
    elif damage == "config":
        config = json.loads((out / "genai_config.json").read_text())
        config["search"]["max_length"] = 7
        (out / "genai_config.json").write_text(json.dumps(config))
        name, why = "genai_config.json", "changed since it was written"
    else:
        (out / "tokenizer.json").unlink()
        name, why = "tokenizer.json", "is missing"
    with pytest.raises(ModelFileError, match=f"{name}.*{why}"):
        lrc.runtime.load(out, verify=True)


def test_inspect_verify_on_the_command_line(folder, onnx_file, tmp_path, capsys):
    code, out, _ = run_main(capsys, "inspect", str(folder[0]), "--verify")
    assert code == 0 and "verified: " in out and "model.onnx" in out and "MatMulNBits" in out
    damaged = copy_of(onnx_file[0], tmp_path)
    flip_weight_bit(damaged)
    code, _, err = run_main(capsys, "inspect", str(damaged), "--verify")
    assert "m.onnx" in one_line_error(code, err) and "weights changed" in err
    code, out, _ = run_main(capsys, "inspect", str(damaged))  # without --verify: described
    assert code == 0


def test_the_digest_changes_with_one_bit(onnx_file):
    path, _ = onnx_file
    model = onnx.load(str(path))
    before = weights_digest(model)
    t = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(t.raw_data)
    raw[0] ^= 1
    t.raw_data = bytes(raw)
    assert weights_digest(model) != before
