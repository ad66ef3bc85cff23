"""export_genai and runtime.load on bad input: one clear error each, and no folder left
half-written."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import lowrank_compiler as lrc
from lowrank_compiler.genai import ExportError, export_genai

transformers = pytest.importorskip("transformers")


def llama(**extra):
    transformers.utils.logging.set_verbosity_error()
    cfg = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**cfg, **extra}))


def leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_models_without_a_cache_are_refused_by_name(tmp_path):
    with pytest.raises(
        ExportError,
        match="Sequential is not an HF causal LM, and lacks .config, forward_with_cache",
    ):
        export_genai(nn.Sequential(nn.Linear(4, 4)), tmp_path / "a")
    bert = transformers.BertModel(
        transformers.BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=64,
        )
    )
    with pytest.raises(ExportError, match="BertModel has no KV cache to export.*export_onnx"):
        export_genai(bert, tmp_path / "b")

    class HandWritten(nn.Module):  # a decoder of one's own, whose config lacks the heads
        config = SimpleNamespace(
            model_type="mine",
            num_hidden_layers=2,
            hidden_size=32,
            vocab_size=64,
            max_position_embeddings=32,
        )

        def can_generate(self):
            return True

    with pytest.raises(
        ExportError, match="SimpleNamespace has no num_attention_heads: the KV cache's shape"
    ):
        export_genai(HandWritten(), tmp_path / "c")
    with pytest.raises(
        ExportError, match="num_attention_heads 4 is not a multiple of num_key_value_heads 3"
    ):
        export_genai(llama(num_key_value_heads=3), tmp_path / "d")
    with pytest.raises(ExportError, match="context_length must be a positive integer"):
        export_genai(llama(), tmp_path / "e", context_length=0)
    with pytest.raises(ExportError, match="accuracy_level"):
        export_genai(llama(), tmp_path / "f", accuracy_level=7)
    with pytest.raises(
        ExportError, match=r"trace_sizes=\(batch, seq, past\): the sizes .* not tensors"
    ):
        export_genai(llama(), tmp_path / "g", example_inputs=(torch.zeros(2, 3, dtype=torch.long),))
    with pytest.raises(
        ExportError, match=r"trace_sizes must be \(batch, seq, past\), each an integer >= 2"
    ):
        export_genai(llama(), tmp_path / "h", trace_sizes=(2, 1, 4))
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['shapes'\]"):
        export_genai(llama(), tmp_path / "i", shapes=(2, 3, 4))
    assert leftovers(tmp_path) == []  # refused before anything was written


def test_a_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    import lowrank_compiler.genai as genai

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(genai, "write_model", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_genai(llama(), tmp_path / "out", accuracy_level=0)
    assert leftovers(tmp_path) == []


def test_incomplete_folders_are_refused_by_load(tmp_path):
    folder = export_genai(llama(), tmp_path / "ok", accuracy_level=0)
    assert lrc.runtime.load(folder).generate(torch.tensor([[3, 4, 5]]), max_new_tokens=2).shape == (
        1,
        5,
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(lrc.ModelFileError, match="has no genai_config.json"):
        lrc.runtime.load(tmp_path / "empty")
    (folder / "model.onnx").rename(tmp_path / "moved.onnx")
    with pytest.raises(lrc.ModelFileError, match="no ONNX file at"):
        lrc.runtime.load(folder)
    config = json.loads((folder / "genai_config.json").read_text())
    del config["model"]["decoder"]["num_key_value_heads"]
    (folder / "genai_config.json").write_text(json.dumps(config))
    with pytest.raises(lrc.ModelFileError, match="lacks what a decoder needs.*num_key_value_heads"):
        lrc.runtime.load(folder)
