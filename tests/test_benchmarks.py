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
TITLES = ("## Targets", "## 1. Quality", "## 2. Fold exactness", "## 3. Size", "## 4. Inference speed",
          "## 4b. Against the memory-bandwidth floor", "## 5. Training cost", "## 6. Compile cost")


@pytest.mark.bench
def test_suite_writes_report_plots_and_numbers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--scale", "smoke", "--quiet", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]

    report = (tmp_path / "report.md").read_text()
    positions = [report.index(t) for t in TITLES]
    assert positions == sorted(positions)
    assert "Failed after" not in report and "Not run" not in report
    assert "PASS" in report or "FAIL" in report
    for name in ("quality_vs_bpw.png", "fold_error.png", "speed.png", "floor.png", "training.png", "compile.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG, name
        assert f"]({name})" in report

    sections = json.loads((tmp_path / "results.json").read_text())["sections"]
    folds = {name: err for name, err, _ in sections["fold"]["result"]["rows"]}
    assert folds["qalora (float zeros), fold zeros=split"] <= 1e-5
    assert folds["qalora (int zeros), fold zeros=split"] <= 1e-6
    assert folds["qalora (float zeros), fold zeros=round"] > 100 * folds["qalora (float zeros), fold zeros=split"]
    sizes = sections["speed"]["result"]["sizes"]
    assert sizes["ours-int"][1] == sizes["ort-rtn"][1]  # same INT4 g32 layout, same layers: same bytes
    assert 8 * sizes["ours-int"][1] / sizes["ours-int"][2] == pytest.approx(4 + 32 / 32 + 4 / 32, rel=0.01)  # codes, scales, zeros
    methods = sections["training"]["result"]["sizes"][0]["methods"]
    assert methods["QA-LoRA (INT4 g32)"]["base_bytes"] < 0.2 * methods["LoRA over fp32"]["base_bytes"]
    assert methods["LR-QAT (INT4 g32)"]["base_bytes"] < 0.3 * methods["LoRA over fp32"]["base_bytes"]
    compiled = sections["compile"]["result"]
    assert compiled["our_layers"] == compiled["ort_layers"]  # both quantized the same linear layers
