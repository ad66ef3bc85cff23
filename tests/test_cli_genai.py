"""The command line's decoder path: ``export DIR --genai`` (an HF model directory, or a compiled one
folded on the way) and ``generate FOLDER --ids | --prompt``, against HF ``generate``."""

from __future__ import annotations

import json

import pytest
import torch
from models import tiny_bpe_tokenizer

import lowrank_compiler as lrc
from lowrank_compiler.app import compiled_dir
from lowrank_compiler.app.cli import main

transformers = pytest.importorskip("transformers")
VOCAB, PROMPT, NEW = 128, [5, 17, 33, 9], 12


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    transformers.utils.logging.set_verbosity_error()
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
            initializer_range=0.15,
        )
    )
    path = tmp_path_factory.mktemp("hf") / "llama"
    model.save_pretrained(path)
    tiny_bpe_tokenizer(VOCAB).save_pretrained(path)
    return path


def hf_tokens(model) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([PROMPT]), max_new_tokens=NEW, do_sample=False, eos_token_id=None
        )
    return out[0, len(PROMPT) :].tolist()


def generated(capsys, folder, *extra) -> str:
    capsys.readouterr()
    assert main(["generate", str(folder), *extra]) == 0
    return capsys.readouterr().out.strip()


def test_export_an_hf_directory_and_generate_its_tokens(hf_dir, tmp_path, capsys):
    folder = tmp_path / "genai"
    assert (
        main(
            ["export", str(hf_dir), "--genai", "--out", str(folder), "--accuracy-level", "0", "-q"]
        )
        == 0
    )
    assert {"model.onnx", "genai_config.json", "tokenizer.json", "lowrank_compiler.json"} <= {
        p.name for p in folder.iterdir()
    }
    want = hf_tokens(transformers.LlamaForCausalLM.from_pretrained(hf_dir))
    ids = ",".join(map(str, PROMPT))
    # eos may come up in greedy decoding: compare up to where HF's own loop would stop
    got = [
        int(x)
        for x in generated(capsys, folder, "--ids", ids, "--max-new-tokens", str(NEW)).split(",")
    ]
    assert got == want[: len(got)] and (len(got) == NEW or got[-1] == 1)
    a = generated(capsys, folder, "--ids", ids, "--sample", "--seed", "3", "--top-k", "20")
    assert a == generated(capsys, folder, "--ids", ids, "--sample", "--seed", "3", "--top-k", "20")
    text = generated(capsys, folder, "--prompt", "abc de", "--max-new-tokens", "4")
    assert text.startswith("abc de")


def test_export_with_an_int4_table(hf_dir, tmp_path, capsys):
    import onnx

    folder = tmp_path / "genai"
    assert (
        main(
            [
                "export",
                str(hf_dir),
                "--genai",
                "--out",
                str(folder),
                "--accuracy-level",
                "0",
                "-q",
                "--embeddings",
                "int4",
                "--embedding-group-size",
                "16",
            ]
        )
        == 0
    )
    ops = [n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node]
    assert ops.count("GatherBlockQuantized") == 1
    reference = transformers.LlamaForCausalLM.from_pretrained(hf_dir)
    assert lrc.quantize_embeddings(reference, group_size=16) == {"model.embed_tokens": "INT4 g16"}
    want = hf_tokens(reference)
    got = [
        int(x)
        for x in generated(
            capsys, folder, "--ids", ",".join(map(str, PROMPT)), "--max-new-tokens", str(NEW)
        ).split(",")
    ]
    assert got == want[: len(got)] and (len(got) == NEW or got[-1] == 1)


def test_export_a_compiled_directory_folds_it_first(hf_dir, tmp_path, capsys):
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"method": "qalora", "bits": 4, "group_size": 32, "rank": 4}))
    assert (
        main(["compile", str(hf_dir), "--policy", str(policy), "--out", str(tmp_path / "c"), "-q"])
        == 0
    )
    c = compiled_dir.load(tmp_path / "c")
    with torch.no_grad():
        for name, p in c.model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    lrc.save_adapters(c.model, tmp_path / "trained")
    folder = tmp_path / "genai"
    assert (
        main(
            [
                "export",
                str(tmp_path / "c"),
                "--adapters",
                str(tmp_path / "trained"),
                "--genai",
                "--out",
                str(folder),
                "--accuracy-level",
                "0",
            ]
        )
        == 0
    )
    assert "holds unfolded adapters: folding them first" in capsys.readouterr().err
    meta = json.loads((folder / "lowrank_compiler.json").read_text())
    assert meta["format"] == "matmulnbits" and (folder / "tokenizer.json").is_file()
    want = hf_tokens(lrc.fold(c.model))
    got = [
        int(x)
        for x in generated(
            capsys, folder, "--ids", ",".join(map(str, PROMPT)), "--max-new-tokens", str(NEW)
        ).split(",")
    ]
    assert got == want[: len(got)]


def test_generate_refuses_what_it_cannot_run(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "--ids", "1,2"]) == 2
    assert "genai_config.json" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--ids", "1,x"]) == 2
    assert "--ids must be token ids separated by commas" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--prompt", "abc"]) == 2
    assert "holds no tokenizer.json" in capsys.readouterr().err


def test_a_swappable_base_and_an_adapter_from_the_command_line(hf_dir, tmp_path, capsys):
    for name, policy in {
        "base": {"method": "rtn", "bits": 4, "group_size": 32},
        "tuned": {"method": "qalora", "bits": 4, "group_size": 32, "rank": 4, "zero_point": "int"},
    }.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(policy))
        cmd = ["compile", str(hf_dir), "--policy", str(tmp_path / f"{name}.json")]
        assert main([*cmd, "--out", str(tmp_path / name), "-q"]) == 0
    c = compiled_dir.load(tmp_path / "tuned")
    with torch.no_grad():
        for name, p in c.model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    lrc.save_adapters(c.model, tmp_path / "trained")
    base = tmp_path / "base-genai"
    export = ["export", str(tmp_path / "base"), "--genai", "--out", str(base)]
    assert main([*export, "--adapter-inputs", "zeros", "-q"]) == 0
    assert json.loads((base / "lowrank_compiler.json").read_text())["accuracy_level"] == 0
    adapter = tmp_path / "tuned.onnx_adapter"
    tuned = ["export", str(tmp_path / "tuned"), "--adapters", str(tmp_path / "trained")]
    capsys.readouterr()
    assert main([*tuned, "--adapter", str(base), "--out", str(adapter)]) == 0
    assert "adapter of" in capsys.readouterr().out and adapter.is_file()
    folded = tmp_path / "folded"
    assert (
        main(
            [
                *tuned,
                "--genai",
                "--zeros",
                "round",
                "--accuracy-level",
                "0",
                "--out",
                str(folded),
                "-q",
            ]
        )
        == 0
    )
    session = lrc.runtime.load(base)
    session.load_adapter(adapter, "t")
    prompt = torch.tensor([PROMPT])
    want = lrc.runtime.load(folded).generate(prompt, max_new_tokens=NEW)
    assert torch.equal(session.generate(prompt, max_new_tokens=NEW, adapter="t"), want)
    assert not torch.equal(session.generate(prompt, max_new_tokens=NEW), want)
    # a level-4 base (the default) takes the same adapter: its own session in our loop
    fast = tmp_path / "fast"
    assert main(["export", str(tmp_path / "base"), "--genai", "--out", str(fast), "-q"]) == 0
    fast_want = ["generate", str(tmp_path / "fast-folded"), "--ids", ",".join(map(str, PROMPT))]
    assert main([*tuned, "--genai", "--zeros", "round", "--out", fast_want[1], "-q"]) == 0
    capsys.readouterr()
    assert main([*fast_want, "--max-new-tokens", str(NEW)]) == 0
    expected = capsys.readouterr().out
    cmd = ["generate", str(fast), "--ids", ",".join(map(str, PROMPT)), "--adapter", str(adapter)]
    assert main([*cmd, "--max-new-tokens", str(NEW)]) == 0
    assert capsys.readouterr().out == expected
    assert main(cmd[:-2] + ["--max-new-tokens", str(NEW)]) == 0
    assert capsys.readouterr().out != expected  # the base alone
    code = main([*export, "--adapter-inputs", "zeros", "--accuracy-level", "4", "-q"])
    assert code == 2 and "accuracy_level 4" in capsys.readouterr().err
