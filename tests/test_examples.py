import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_gpt_example_runs_and_trains(tmp_path, capsys):
    final = load("custom_gpt").main(["--steps", "20", "--dump-dir", str(tmp_path)])
    out = capsys.readouterr().out
    first = float(
        next(line for line in out.splitlines() if line.startswith("step    1")).split()[-1]
    )
    assert final < first
    assert "02-insert-lora.txt" in out and "8 layer(s) rewritten" in out


def test_llama_example_runs_the_whole_path(tmp_path, capsys):
    result = load("llama_qalora").main(["--steps", "8", "--out", str(tmp_path)])
    assert result["last_loss"] < result["first_loss"]
    assert result["pure"] and result["parity"] <= 1e-4 and result["fold_error"] <= 1e-5
    out = capsys.readouterr().out
    assert "02-insert-qalora.txt" in out and "03-fold.txt" in out and "greedy continuation" in out


def test_minilm_example_short_setting(tmp_path):
    result = load("minilm_qalora").main(
        [
            "--steps",
            "3",
            "--eval-sentences",
            "8",
            "--calibration-sentences",
            "32",
            "--no-baselines",
            "--out",
            str(tmp_path),
        ]
    )
    mean, worst = result["onnx_vs_torch"]
    assert worst >= 0.9999  # the exported INT4 model keeps the trained model's embeddings
    assert {"fp32", "lrqat_int4"} <= set(result["files"])  # LR-QAT is the default method
    text = (tmp_path / "results.md").read_text()
    assert (
        "| LR-QAT + trained scales over GPTQ, folded (ours) |" in text and "pure INT4: yes" in text
    )
    assert (tmp_path / "adapters" / "adapters.safetensors").exists()
    assert (tmp_path / "dumps" / "03-insert-lrqat.txt").exists() and (
        tmp_path / "dumps" / "04-fold.txt"
    ).exists()


def test_decoder_genai_example_generates_the_folded_models_tokens(tmp_path, capsys):
    result = load("decoder_genai").main(
        ["--steps", "8", "--new-tokens", "16", "--out", str(tmp_path / "genai")]
    )
    assert (
        result["ours"] == result["torch"]
    )  # fp32 compute (accuracy level 0): the same greedy tokens
    if result["onnxruntime_genai"] is not None:
        assert result["onnxruntime_genai"] == result["torch"][: len(result["onnxruntime_genai"])]
    assert (tmp_path / "genai" / "genai_config.json").is_file()


def test_stories260k_example_fine_tunes_the_real_model_in_bfloat16(tmp_path, capsys):
    result = load("stories260k").main(["--steps", "6", "--out", str(tmp_path)])
    assert result["last_loss"] < result["first_loss"]
    assert result["fold_error"] <= 1e-5 and result["same_tokens"]
    assert result["text"].startswith("Once upon a time")


def test_llm_finetune_example_short_setting(tmp_path):
    result = load("llm_finetune").main(
        ["--steps", "2", "--methods", "lrqat", "--lrs", "0.03", "--eval-windows", "4"]
        + ["--train-modules", "textwrap", "--eval-modules", "smtplib", "--out", str(tmp_path)]
    )
    (row,) = result["rows"]
    assert row["tokens_ours_eq_torch"] is True and (tmp_path / "results.md").is_file()
    assert (tmp_path / "best" / "genai_config.json").is_file()


def test_layer_drawing_example_draws_the_layer_and_keeps_pages_small(tmp_path):
    """MiniLM under LR-QAT then fold: the layer before (lrqat_linear) and after (IntLinear), and
    no dump page over 2 MB."""
    result = load("layer_drawing").main(["--out", str(tmp_path)])
    page = result["page"].read_text()
    assert page.count('<g class="node') >= 8  # lrqat_linear and its 7 tensors, then IntLinear
    assert "lrqat_linear" in page and "IntLinear (bits 4, group_size 32)" in page
    sizes = {p.name: p.stat().st_size for p in result["dumps"].glob("*.html")}
    assert len(sizes) >= 5 and max(sizes.values()) < 2 * 2**20, sizes
