"""Packaging and layering rules: install names, one-way imports, README and CI in step."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"runtime": 0, "passes": 1, "lowrank_compiler": 2, "app": 3}
FX = ("torch.fx",)


def package_of(path: Path) -> str:
    """The import name of the package a source file sits in (``passes/helpers/x.py`` ->
    ``lowrank_compiler.passes.helpers``)."""
    parts = path.relative_to(ROOT).parts[:-1]
    return (
        ".".join(parts)
        if parts[0] == "lowrank_compiler"
        else ".".join(("lowrank_compiler", *parts))
    )


def imports_of(path: Path, at_import_time: bool = False) -> list[str]:
    """Absolute module names a file imports (relative imports resolved against its package);
    ``from torch import fx`` counts as ``torch.fx``. ``at_import_time``: only the imports that
    run when the module is imported (not those inside functions)."""
    package = package_of(path)
    out = []
    tree = ast.parse(path.read_text())
    nodes = tree.body if at_import_time else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            out.append(module)
            out += [
                f"{module}.{a.name}" for a in node.names
            ]  # `from torch import fx`, `from . import graph`
    return out


def sources(layer: str) -> list[Path]:
    """The source files of a layer. ``lowrank_compiler``: the library's own; ``app``: ``app/`` and
    ``__main__.py`` (``python -m lowrank_compiler``, the command line's entry)."""
    main = ROOT / "lowrank_compiler" / "__main__.py"
    if layer == "app":
        return [main, *sorted((ROOT / "lowrank_compiler" / "app").rglob("*.py"))]
    files = sorted((ROOT / layer).rglob("*.py"))
    if layer == "lowrank_compiler":
        return [p for p in files if p != main and p.relative_to(ROOT).parts[1] != "app"]
    return files


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in ("passes", "runtime"):
        raise AssertionError(f"top-level import of {module}: use lowrank_compiler.{module}")
    if parts[0] != "lowrank_compiler":
        return None
    return (
        parts[1]
        if len(parts) > 1 and parts[1] in ("passes", "runtime", "app")
        else "lowrank_compiler"
    )


def test_arrows_point_down_only():
    for layer in LAYERS:
        for path in sources(layer):
            for module in imports_of(path):
                target = layer_of(module)
                if target is None:
                    continue
                assert LAYERS[target] <= LAYERS[layer], (
                    f"{path.relative_to(ROOT)} imports {module} (upward)"
                )


def test_a_pass_imports_no_other_pass_and_helpers_import_no_pass():
    allowed = ("lowrank_compiler.passes.registry", "lowrank_compiler.passes.helpers")
    for path in sources("passes"):
        if path.name == "__init__.py" and path.parent.name == "passes":
            continue  # the package imports every pass to register it
        for module in imports_of(path):
            if module.startswith("lowrank_compiler.passes") and module != "lowrank_compiler.passes":
                assert module.startswith(allowed), f"{path.relative_to(ROOT)} imports {module}"
                if "helpers" in path.parts:
                    assert module.startswith("lowrank_compiler.passes.helpers"), (
                        f"{path.relative_to(ROOT)} (a helper) imports {module}"
                    )


def test_runtime_is_run_time_code_only():
    """runtime/ imports no torch.fx and nothing of the project outside runtime/ (compile-time
    helpers live beside the passes)."""
    for path in sources("runtime"):
        tree = ast.parse(path.read_text())
        uses = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute)
            and n.attr == "fx"
            and isinstance(n.value, ast.Name)
            and n.value.id == "torch"
        ]
        assert not uses, f"{path.relative_to(ROOT)}:{uses[0].lineno if uses else 0} uses torch.fx"
        for module in imports_of(path):
            assert not module.startswith(FX), f"{path.relative_to(ROOT)} imports {module}"
            if module.startswith("lowrank_compiler"):
                assert module.startswith("lowrank_compiler.runtime"), (
                    f"{path.relative_to(ROOT)} imports {module}"
                )


R = "lowrank_compiler.runtime"
# what each room of runtime/ may import of the project (itself always); the shared basics
# (errors, files, digests, progress) import only the errors
ROOMS = {
    "quant": (f"{R}.quant", f"{R}.errors"),
    "layers": (f"{R}.layers", f"{R}.quant", f"{R}.errors", f"{R}.progress"),
    "onnx": (
        f"{R}.onnx",
        f"{R}.layers",
        f"{R}.quant",
        f"{R}.errors",
        f"{R}.files",
        f"{R}.progress",
    ),
    "serve": (
        f"{R}.serve",
        f"{R}.onnx.file",
        f"{R}.onnx.integrity",
        f"{R}.digests",
        f"{R}.quant.formats",
        f"{R}.errors",
    ),
    "errors.py": (f"{R}.errors",),
    "files.py": (f"{R}.errors",),
    "digests.py": (f"{R}.errors",),
    "progress.py": (f"{R}.errors",),
}


def test_each_room_of_runtime_imports_only_the_rooms_below_it():
    """quant/ (numbers) imports no layer; layers/ no exporter or session; onnx/ no session;
    serve/ nothing but ONNX file reading and checking, file digests, the format vocabulary and the
    errors."""
    rooms = {
        p.name for p in (ROOT / "runtime").iterdir() if p.name not in ("__init__.py", "__pycache__")
    }
    assert rooms == set(ROOMS), f"runtime/ holds {sorted(rooms)}; the rules name {sorted(ROOMS)}"
    for room, allowed in ROOMS.items():
        files = [ROOT / "runtime" / room] if room.endswith(".py") else sources(f"runtime/{room}")
        for path in files:
            for module in imports_of(path):
                if module.startswith(R) and module != R:
                    assert module.startswith(allowed), f"{path.relative_to(ROOT)} imports {module}"


def test_the_library_never_imports_the_application():
    """app/ (command line, compiled directories, model specs, jobs, demo data) uses the library;
    the library never imports it."""
    for layer in ("runtime", "passes", "lowrank_compiler"):
        for path in sources(layer):
            for module in imports_of(path):
                assert not module.startswith("lowrank_compiler.app"), (
                    f"{path.relative_to(ROOT)} imports {module}"
                )


def test_installed_names_and_no_top_level_passes_or_runtime(tmp_path):
    code = (
        "import importlib.util, lowrank_compiler.passes as p, lowrank_compiler.runtime as r;"
        "assert importlib.util.find_spec('passes') is None and importlib.util.find_spec('runtime') "
        "is None;"
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
        assert (
            "torch==2.13.0" in command
        )  # never an unpinned torch: that pulls a multi-GB CUDA build
        assert command in ci_lines, f".ci/run does not run the README command: {command}"


def module_file(module: str) -> Path | None:
    """The source file of a project module (a package's ``__init__.py``), or None."""
    parts = module.split(".")
    if parts[0] != "lowrank_compiler":
        return None
    top = {"passes": "passes", "runtime": "runtime"}.get(parts[1] if len(parts) > 1 else "", None)
    rel = [top, *parts[2:]] if top else ["lowrank_compiler", *parts[1:]]
    path = ROOT.joinpath(*rel)
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def import_closure(module: str) -> set[str]:
    """Every module importing ``module`` executes: its imports, their packages' ``__init__``,
    transitively (the top package's ``__init__``, which imports the whole API, left out)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        for imported in imports_of(path, at_import_time=True):
            parts = imported.split(".")
            todo += [
                ".".join(parts[:i]) for i in range(2, len(parts) + 1)
            ]  # packages first, as Python does
            todo.append(parts[0]) if parts[0] != "lowrank_compiler" else None
    return seen


def test_a_policy_imports_no_pass_manager_exporter_or_onnxruntime():
    closure = import_closure("lowrank_compiler.policy")
    for heavy in (
        "lowrank_compiler.manager",
        "lowrank_compiler.runtime.onnx.export",
        "onnxruntime",
        "lowrank_compiler.passes.export_onnx",
    ):
        assert heavy not in closure, f"building a Policy imports {heavy}"


# Each format fact has one definition (runtime/quant/formats.py); these literals anywhere else are
# copies
# that could drift apart. The split correction's formula is matched by its shape.
STRAY = {
    r"\(2, 3, 4, 8\)": "BITS",
    r"\(2, 4, 8\)": "KERNEL_BITS",
    r'"rtn", "gptq"|"gptq", "rtn"': "QUANTIZERS",
    r'\("float", "int"\)': "ZERO_POINT_MODES",
    r'"split", "float", "round"': "FOLD_ZEROS",
    r'"matmulnbits", "qdq"': "EXPORT_FORMATS",
    r"\(0, 1, 2, 3, 4\)": "ACCURACY_LEVELS",
    r'=\s*"lowrank_compiler"\s*$': "METADATA_KEY",
    r"\.T\.to\(torch\.float32\)": "split_correction",
    r"& \(\w+ - 1\)": "group_size_problem",
}


def test_each_format_fact_is_defined_once():
    stray = []
    for layer in (*LAYERS, "benchmarks", "examples"):
        for path in sources(layer):
            if path == ROOT / "runtime" / "quant" / "formats.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for pattern, name in STRAY.items():
                    if re.search(pattern, line):
                        stray.append(
                            f"{path.relative_to(ROOT)}:{number}: a copy of formats.{name}: "
                            f"{line.strip()}"
                        )
    assert not stray, "\n".join(stray)


def test_library_files_and_functions_stay_small():
    """No library module over 400 lines; no function over 80 lines outside the tests."""
    long_files = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for layer in ("runtime", "passes", "lowrank_compiler")
        for p in sources(layer)
        if (n := len(p.read_text().splitlines())) > 400
    ]
    assert not long_files, long_files
    long_functions = []
    for layer in (*LAYERS, "benchmarks", "examples"):
        for path in sources(layer):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > 80:
                        long_functions.append(
                            f"{path.relative_to(ROOT)}: {node.name} ({length} lines)"
                        )
    assert not long_functions, long_functions


def test_no_isinstance_ladder_over_layer_kinds_outside_the_layers():
    """Code outside runtime/layers/ asks a layer (its protocol), never tests its class against the
    kinds one after another: at most one layer-kind class is named in any isinstance call."""
    kinds = {
        "IntLinear",
        "LoRALinear",
        "QALoRALinear",
        "LRQATLinear",
        "NF4Linear",
        "GridBase",
        "IntEmbedding",
    }
    ladders = []
    for layer in ("runtime", "passes", "lowrank_compiler", "app", "benchmarks", "examples"):
        for path in sources(layer):
            if "layers" in path.relative_to(ROOT).parts[:2]:
                continue
            tree = ast.parse(path.read_text())
            scopes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
            top = ast.Module([n for n in tree.body if not isinstance(n, ast.FunctionDef)], [])
            for scope in [*scopes, top]:
                named = {
                    n.id if isinstance(n, ast.Name) else n.attr  # IntLinear or layers.IntLinear
                    for call in ast.walk(scope)
                    if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "isinstance"
                    for n in ast.walk(call)
                    if getattr(n, "id", getattr(n, "attr", None)) in kinds
                }
                if len(named) > 1:
                    where = getattr(scope, "name", "module level")
                    ladders.append(f"{path.relative_to(ROOT)}: {where} tests {sorted(named)}")
    assert not ladders, ladders


def _layout_files(block: str) -> set[str]:
    """The paths the README's layout block names: ``lowrank_compiler/``'s files bare, a folder
    at column 0 (``passes/``, a package folder at the repository's top) by its name, one at column
    2 (``  quant/``) under the last column-0 folder (``app/`` under the package), and ``jobs/:``
    inside a block holds the files after it."""
    package, named, top, folder = "lowrank_compiler", set(), "", None
    for line in block.splitlines():
        head = re.match(r"^( {0,2})(\w+)/ ", line)
        if head and not line.startswith("tests/"):
            indent, name = head.groups()
            top = "" if name == package else (name if not indent else top)
            folder = (f"{top}/{name}" if indent else top).strip("/")
            line = line[head.end() :]
        if folder is None:
            continue
        parts = re.split(r"(\w+)/:", line)  # text, subfolder, text, ...
        for i, part in enumerate(parts):
            if i % 2:
                folder = f"{folder}/{part}".strip("/")
            else:
                named |= {f"{folder}/{f}".strip("/") for f in re.findall(r"\b(\w+\.py)\b", part)}
    return named


def test_the_readme_layout_names_every_module():
    """The README's layout section names every module of the package under its own folder, and
    every ``.py`` it names is there; the README stays a manual (under 600 lines)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 600, "README.md: move histories and tables to docs/"
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    named = _layout_files(section.split("```")[1])
    files = {"__init__.py"}  # the package's (lowrank_compiler/), named for its public names
    for base, folder in ((ROOT / "lowrank_compiler", ""), (ROOT, "passes"), (ROOT, "runtime")):
        found = (base / folder).rglob("*.py")
        files |= {p.relative_to(base).as_posix() for p in found if p.name != "__init__.py"}
    assert not files - named, f"modules the README's layout does not name: {sorted(files - named)}"
    assert not named - files, f"named where they are not: {sorted(named - files)}"
