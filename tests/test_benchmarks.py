"""The benchmark suite end to end on its smallest setting: the command writes the report,
the plots and the numbers, and the numbers hold what they must whatever the machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
TITLES = (
    "## Targets",
    "## 1. Quality",
    "## 2. Fold exactness",
    "## 3. Size",
    "## 4. Inference speed",
    "## 4b. Against the memory-bandwidth floor",
    "## 5. Training cost",
    "## 6. Compile cost",
    "## 7. Decoders in onnxruntime-genai",
    "## 8. Many fine-tunes over one INT4 base",
)


@pytest.mark.bench
def test_suite_writes_report_plots_and_numbers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--scale", "smoke", "--quiet", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    report = (tmp_path / "report.md").read_text()
    positions = [report.index(t) for t in TITLES]
    assert positions == sorted(positions)
    assert "Failed after" not in report and "Not run" not in report
    head = report.index("| target | measured | verdict |")
    rows = [
        line for line in report[head:].split("\n\n", 1)[0].splitlines()[2:] if line.startswith("|")
    ]
    verdicts = [row.rsplit("|", 2)[-2].strip() for row in rows]
    assert len(rows) >= 8 and set(verdicts) <= {"**PASS**", "**FAIL**", "n/a"}, rows
    assert {"**PASS**", "**FAIL**"} & set(verdicts), "no target was judged at all"
    for name in (
        "quality_vs_bpw.png",
        "fold_error.png",
        "speed.png",
        "floor.png",
        "training.png",
        "compile.png",
        "genai.png",
    ):
        assert (tmp_path / name).read_bytes()[:8] == PNG, name
        assert f"]({name})" in report

    sections = json.loads((tmp_path / "results.json").read_text())["sections"]
    folds = {name: err for name, err, _ in sections["fold"]["result"]["rows"]}
    assert folds["qalora (float zeros), fold zeros=split"] <= 1e-5
    assert folds["qalora (int zeros), fold zeros=split"] <= 1e-6
    assert (
        folds["qalora (float zeros), fold zeros=round"]
        > 100 * folds["qalora (float zeros), fold zeros=split"]
    )
    sizes = sections["speed"]["result"]["sizes"]
    assert (
        sizes["ours-int"][1] == sizes["ort-rtn"][1]
    )  # same INT4 g32 layout, same layers: same bytes
    assert 8 * sizes["ours-int"][1] / sizes["ours-int"][2] == pytest.approx(
        4 + 32 / 32 + 4 / 32, rel=0.01
    )  # codes, scales, zeros
    methods = sections["training"]["result"]["sizes"][0]["methods"]
    assert (
        methods["QA-LoRA (INT4 g32)"]["base_bytes"] < 0.2 * methods["LoRA over fp32"]["base_bytes"]
    )
    assert (
        methods["LR-QAT (INT4 g32)"]["base_bytes"] < 0.3 * methods["LoRA over fp32"]["base_bytes"]
    )
    compiled = sections["compile"]["result"]
    assert compiled["our_layers"] == compiled["ort_layers"]  # both quantized the same linear layers
    genai = sections["genai"]["result"]
    assert "error" not in genai["large"], genai["large"]
    assert genai["large"]["phases"][-1]["peak"] > genai["large"]["phases"][0]["rss"]
    assert set(genai["decode_ms"]) == set(genai["nodes"]) and genai["no_cache_ms"]
    assert (
        genai["nodes"]["ours-lora-int"] == genai["nodes"]["ours"]
    )  # an integer-zero adapter folds away
    layers = genai["settings"]["layers"]
    assert genai["builder_lora_ops"] == {
        "MatMulNBits": 14 * layers,
        "Add": 7 * layers,
    }  # A, B and Add per linear


def test_plain_lora_adapter_computes_the_qalora_adapter(tmp_path, monkeypatch):
    """The adapter the genai section gives the model builder: PEFT's plain LoRA on the float
    layer adds what our QA-LoRA adapter adds on the INT4 one."""
    peft = pytest.importorskip("peft")
    import copy

    import torch

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import genai_models as gm

    model = gm.make_model(64, 1, 2, 1, 100, 64)
    compiled = gm.with_adapter(model, rank=4)
    path = gm.plain_lora_adapter(compiled, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(path)).base_model.model
    x = torch.randn(3, 64)
    checked = 0
    with torch.no_grad():
        for name, ours in compiled.named_modules():
            if hasattr(ours, "lora_A") and ours.in_features == 64:
                peer = theirs.get_submodule(name)
                added_ours, added_theirs = ours(x) - ours.base(x), peer(x) - peer.base_layer(x)
                assert added_ours.abs().max() > 1e-3  # the adapter does something
                torch.testing.assert_close(added_theirs, added_ours, rtol=1e-5, atol=1e-6)
                checked += 1
    assert checked == 6  # q, k, v, o, gate, up (down reads the MLP width)


def test_the_stories260k_benchmark_fails_a_pair_outside_one_percent(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.bench_stories260k import outside

    assert outside({"a": 1.0, "b": 0.995, "c": 1.0099}) == []
    assert outside({"a": 1.011, "b": 0.98, "c": 1.0}) == ["a", "b"]
    assert outside({"a": float("nan")}) == ["a"]  # a missing number is no pass
