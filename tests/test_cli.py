from lowrank_compiler.cli import main


def test_demo_prints_the_summary_and_writes_dumps(tmp_path, capsys):
    assert main(["demo", "--rank", "4", "--dump-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.attn.q_proj" in out and "12 layer(s) rewritten" in out
    assert "max |compiled - original| on a random batch: 0" in out
    assert (tmp_path / "02-insert-lora.txt").exists()


def test_passes_lists_the_registry(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "find-linears" in out and "insert-lora" in out and "rank=16" in out


def test_bad_option_exits_2_with_a_message(capsys):
    assert main(["demo", "--rank", "0"]) == 2
    assert "rank must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["demo", "--target", "nothing"]) == 2
    assert "matches none of the model's" in capsys.readouterr().err
