"""Packaging and layering rules: install names, one-way imports, README and CI in step."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"runtime": 0, "passes": 1, "lowrank_compiler": 2}


def imports_of(path: Path) -> list[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    layer = path.relative_to(ROOT).parts[0]
    package = "lowrank_compiler" if layer == "lowrank_compiler" else f"lowrank_compiler.{layer}"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.append(".".join(base + ([node.module] if node.module else [])))
            else:
                out.append(node.module)
    return out


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in ("passes", "runtime"):
        raise AssertionError(f"top-level import of {module}: use lowrank_compiler.{module}")
    if parts[0] != "lowrank_compiler":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ("passes", "runtime") else "lowrank_compiler"


def test_arrows_point_down_only():
    for layer in LAYERS:
        for path in (ROOT / layer).glob("*.py"):
            for module in imports_of(path):
                target = layer_of(module)
                if target is None:
                    continue
                assert LAYERS[target] <= LAYERS[layer], f"{path.relative_to(ROOT)} imports {module} (upward)"
                if layer == "passes" and target == "passes" and path.name not in ("__init__.py",):
                    assert module in ("lowrank_compiler.passes.registry",), (
                        f"{path.relative_to(ROOT)} imports another pass ({module})")


def test_installed_names_and_no_top_level_passes_or_runtime(tmp_path):
    code = (
        "import importlib.util, lowrank_compiler.passes as p, lowrank_compiler.runtime as r;"
        "assert importlib.util.find_spec('passes') is None and importlib.util.find_spec('runtime') is None;"
        "print(p.__name__, r.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["lowrank_compiler.passes", "lowrank_compiler.runtime"]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```(?:bash|sh)\n(.*?)```", section, re.S)]


def test_readme_has_two_setup_commands_that_ci_runs_verbatim():
    commands = readme_commands()
    assert len(commands) == 2
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert "torch==2.13.0" in command  # never an unpinned torch: that pulls a multi-GB CUDA build
        assert command in ci_lines, f".ci/run does not run the README command: {command}"
