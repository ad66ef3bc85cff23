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
    first = float(next(line for line in out.splitlines() if line.startswith("step    1")).split()[-1])
    assert final < first
    assert "02-insert-lora.txt" in out and "8 layer(s) rewritten" in out
