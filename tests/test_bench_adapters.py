"""The adapters benchmark (``python -m benchmarks.bench_adapters``) end to end on a tiny model:
its configurations run, an active adapter gives its folded file's tokens, the report is written."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime_genai") is None, reason="needs onnxruntime-genai"
)


def test_the_adapters_benchmark_runs_small(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import bench_adapters

    args = [
        "--hidden",
        "256",
        "--layers",
        "1",
        "--adapters",
        "2",
        "--rounds",
        "1",
        "--our-rounds",
        "1",
    ]
    result = bench_adapters.main([*args, "--context", "16", "--new", "4", "--out", str(tmp_path)])
    assert result["same_tokens_as_folded"] is True
    assert set(result["decode_ms"]) == {
        "swappable",
        "constant",
        "folded",
        "constant-acc4",
        "builder-lora",
        "builder-lora-acc0",
        "swappable+t0",
        "swappable+t1",
    }
    ours = result["ours"]
    assert ours["same_tokens_as_folded"] is True
    assert set(ours["decode_ms"]) == {
        "ours-acc4",
        "ours-folded-acc4",
        "ours-acc4+t0",
        "ours-acc4+t1",
    }
    assert len(ours["session_rss_bytes"]) == 2
    sizes = result["sizes"]
    assert 0 < sizes["adapter"] < sizes["base_onnx"] / 16 and sizes["adapter_tensors"] > 0
    assert sizes["adapter"] < sizes["adapter_with_scales"] < sizes["base_onnx"]  # + float scales
    assert "worst of 2 adapters" in (tmp_path / "report.md").read_text()
    rows = bench_adapters.targets(result, lambda ok: "PASS" if ok else "FAIL")
    assert len(rows) == 4 and {r[2] for r in rows} <= {"PASS", "FAIL"}
    assert rows[2][1].startswith("worst of 2:")  # our loop's row judges every adapter
