"""The LLM job (``lowrank-compiler demo llm``) in a short setting: a few steps on three modules,
the table's rows, the token check of our rows, the seeding, and bad input.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from test_cli import one_line_error, run_main

from lowrank_compiler.app.jobs import llm
from lowrank_compiler.app.pretrained import stories260k_path

pytest.importorskip("transformers")
SHORT = dict(
    steps=4,
    lr_steps=2,
    lrs=(1e-2, 3e-2),
    batch=4,
    val_windows=2,
    eval_windows=4,
    new_tokens=8,
    latency_rounds=1,
    decode_tokens=8,
    calibration_windows=8,
    train_modules=("textwrap", "shlex", "difflib"),
    eval_modules=("smtplib",),
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm")
    cfg = llm.JobConfig(out=str(out), **SHORT)  # every row
    return llm.run(cfg, log=lambda *_: None), out


def test_the_table_has_every_row_deployed_as_asked(result):
    res, out = result
    keys = [r["key"] for r in res["rows"]]
    assert keys == [
        "base-torch",
        "base-builder",
        "lora-torch",
        "lora-builder",
        "lora-builder-adapter",
        "lora-gptq",
        "qlora-fold",
        "qalora-int-fold",
        "qalora-split-fold",
        "lrqat-fold",
    ]
    for row in res["rows"]:
        assert row["perplexity"] > 1
        if row["key"] != "base-torch" and row["key"] != "lora-torch":
            assert row["engine"] == "onnxruntime" and row["size"] > 0
    text = (out / "results.md").read_text()
    assert "| ours: LR-QAT, folded (integer codes) |" in text and "Goals:" in text
    assert json.loads((out / "results.json").read_text())["rows"][0]["key"] == "base-torch"
    assert (out / "adapters" / "lrqat").is_dir() and (out / "perplexity.png").stat().st_size > 0
    # best/: the deployed row of the lowest perplexity, its folder as it was measured
    deployed = [r for r in res["rows"] if r.get("folder")]
    best = min(deployed, key=lambda r: r["perplexity"])
    assert res["best"] == best["key"]
    for name in ("model.onnx", "genai_config.json"):
        assert (out / "best" / name).read_bytes() == (Path(best["folder"]) / name).read_bytes()


def test_our_rows_tokens_agree_across_genai_our_loop_and_pytorch(result):
    res, _ = result
    ours = [r for r in res["rows"] if r["ours"]]
    assert len(ours) == 3
    for row in ours:
        assert row["tokens_ours_eq_torch"] is True
        assert row["tokens_og_eq_ours"] in (True, None)  # None: onnxruntime-genai not installed


def test_the_builder_row_says_how_it_was_made(result):
    res, _ = result
    builder = next(r for r in res["rows"] if r["key"] == "base-builder")
    # stories260K's head size (8) is one onnxruntime-genai's GroupQueryAttention refuses
    assert builder["how"].startswith(("stand-in", "onnxruntime-genai model builder"))


TIMINGS = {"step_ms", "peak_rss", "peak_rss_process", "decode_ms", "decode_rounds", "folder"}


def test_the_same_command_gives_the_same_table(result, tmp_path):
    # the same config again: every row's numbers but times and memory, and its tokens, equal
    res, _ = result
    cfg = llm.JobConfig(out=str(tmp_path / "again"), **SHORT)
    again = llm.run(cfg, log=lambda *_: None)
    assert again["best"] == res["best"]
    for first, second in zip(res["rows"], again["rows"], strict=True):
        keys = (set(first) | set(second)) - TIMINGS
        assert {k: first.get(k) for k in keys} == {k: second.get(k) for k in keys}, first["key"]


def tiny_model_dir(root, kind: str):
    """A random-weight ``kind`` causal LM (64 wide, 2 layers) with stories260K's tokenizer."""
    import transformers

    common = dict(vocab_size=512, num_hidden_layers=2, bos_token_id=1, eos_token_id=2)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_embd=64, n_head=4, n_positions=256, **common)
    else:
        configs = {
            "qwen2": transformers.Qwen2Config,
            "mistral": transformers.MistralConfig,
            "phi3": transformers.Phi3Config,  # q, k, v fused in one qkv_proj, gate and up too
        }
        config = configs[kind](
            hidden_size=64,
            intermediate_size=172,  # not a multiple of the group: the partial last group
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
            **({"pad_token_id": 0} if kind == "phi3" else {}),
        )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    folder = root / kind
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(stories260k_path() / name, folder / name)
    return folder


@pytest.mark.parametrize("kind", ["qwen2", "mistral", "phi3", "gpt2"])
def test_any_causal_lm_directory_runs_and_our_tokens_agree(tmp_path, kind):
    cfg = llm.JobConfig(
        model=str(tiny_model_dir(tmp_path, kind)),
        out=str(tmp_path / "out"),
        methods=("lrqat",),
        **{**SHORT, "lrs": (1e-2,)},
    )
    (row,) = llm.run(cfg, log=lambda *_: None)["rows"]
    assert row["perplexity"] > 1 and row["tokens_ours_eq_torch"] is True
    assert row["tokens_og_eq_ours"] in (True, None)


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime_genai") is None, reason="needs onnxruntime-genai"
)
def test_the_model_builder_itself_deploys_a_model_it_can_run(tmp_path):
    # head size 16: onnxruntime-genai's GroupQueryAttention takes it, so no stand-in
    cfg = llm.JobConfig(
        model=str(tiny_model_dir(tmp_path, "qwen2")),
        out=str(tmp_path / "out"),
        methods=("base", "lora"),
        **SHORT,
    )
    rows = {r["key"]: r for r in llm.run(cfg, log=lambda *_: None)["rows"]}
    assert rows["base-builder"]["how"] == "onnxruntime-genai model builder"
    assert rows["lora-builder-adapter"]["how"] == "onnxruntime-genai model builder, adapter_path"
    folders = tmp_path / "out" / "folders"
    assert (folders / "base-builder" / "model.onnx").is_file()
    # the builder's INT4 file of random weights: within a few percent of the float model
    ratio = rows["base-builder"]["perplexity"] / rows["base-torch"]["perplexity"]
    assert abs(ratio - 1) < 0.05
    # adapter_path: the base unfused, per adapted linear an INT4 A and B beside it and an Add
    graph = onnx.load(str(folders / "lora-builder-adapter" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    adapted = 7 * 2  # q, k, v, o, gate, up, down in each of 2 layers
    assert ops.count("MatMulNBits") == 3 * adapted and ops.count("Add") == adapted
    # the trained LoRA's perplexity (within 1%), not the base's (training moved it 7%)
    lora, base = rows["lora-torch"]["perplexity"], rows["base-torch"]["perplexity"]
    assert abs(rows["lora-builder-adapter"]["perplexity"] / lora - 1) < 0.01 < 1 - lora / base


@pytest.mark.parametrize(
    "args, words",
    [
        (["--train-modules", "no_such_module_xyz"], "no_such_module_xyz"),
        (["--package", "no_such_package_xyz"], "no_such_package_xyz"),
        (["--steps", "0"], "steps must be an integer >= 1"),
        (["--methods", "nope"], "unknown method 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, args, words):
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "demo", "llm", "--out", str(out), *args)
    assert words in one_line_error(code, err)
    assert not out.exists()


def test_a_model_without_tokenizer_or_not_causal_is_refused(capsys, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(stories260k_path() / name, bare / name)
    code, _, err = run_main(
        capsys, "demo", "llm", "--model", str(bare), "--out", str(tmp_path / "o")
    )
    assert "no tokenizer files" in one_line_error(code, err)
    config = json.loads((bare / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    (bare / "config.json").write_text(json.dumps(config))
    code, _, err = run_main(
        capsys, "demo", "llm", "--model", str(bare), "--out", str(tmp_path / "o")
    )
    assert "not a causal LM" in one_line_error(code, err)
    assert not (tmp_path / "o").exists()
