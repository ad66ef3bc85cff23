"""The LLM job's rows: how each route trains, and how it deploys.

A ``Method`` is one training run (or none); its ``Deploy`` entries are the rows it gives, each
deployed the way its users deploy it:

- ``torch``: the model itself in PyTorch (the fp32 base; fp32 + LoRA, the quality ceiling);
- ``builder``: the LoRA merged into fp32 (or the base), then onnxruntime-genai's model builder
  INT4 (asymmetric, the job's group size), the route onnxruntime-genai documents;
- ``builder-adapter``: the builder's INT4 base with the LoRA unmerged beside it (its multi-LoRA
  route);
- ``gptq``: the LoRA merged, then GPTQ INT4 by us (fine-tune then quantize);
- ``fold``: the trained model folded (``zeros`` as given), then ``export_genai``.

Ours are the QA-LoRA and LR-QAT rows, over GPTQ bases with trained scales (the settings the
distillation job and the issue's probe found best).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Deploy:
    kind: str  # torch | builder | builder-adapter | gptq | fold
    label: str
    zeros: str = "split"  # fold only
    ours: bool = False  # our rows: tokens checked across onnxruntime-genai, our loop and PyTorch


@dataclass(frozen=True)
class Method:
    key: str
    policy: dict | None  # the compile policy's fields; None: the float model as it is
    deploys: tuple[Deploy, ...]
    train: bool = True
    lr_scale: float = 1.0  # the search's rates times this (LR-QAT's adapter is in grid units)

    @property
    def gptq(self) -> bool:
        return bool(self.policy) and self.policy.get("quantizer") == "gptq"


OURS = {"train_scales": True, "quantizer": "gptq"}
METHODS = (
    Method(
        "base",
        None,
        (
            Deploy("torch", "fp32 base (no fine-tune), PyTorch"),
            Deploy("builder", "fp32 base -> model builder INT4"),
        ),
        train=False,
    ),
    Method(
        "lora",
        {"method": "lora"},
        (
            Deploy("torch", "fp32 + LoRA, PyTorch (the ceiling)"),
            Deploy("builder", "LoRA merged -> model builder INT4"),
            Deploy("builder-adapter", "model builder INT4 base + unmerged LoRA"),
            Deploy("gptq", "LoRA merged -> GPTQ INT4 (export_genai)"),
        ),
    ),
    Method(
        "qlora",
        {"method": "qlora"},
        (Deploy("fold", "QLoRA (NF4) trained, merged, requantized INT4"),),
    ),
    Method(
        "qalora-int",
        {"method": "qalora", "zero_point": "int", **OURS},
        (Deploy("fold", "ours: QA-LoRA, integer zeros, folded", zeros="round", ours=True),),
    ),
    Method(
        "qalora-split",
        {"method": "qalora", **OURS},
        (Deploy("fold", "ours: QA-LoRA, split zeros, folded", zeros="split", ours=True),),
    ),
    Method(
        "lrqat",
        {"method": "lrqat", **OURS},
        (Deploy("fold", "ours: LR-QAT, folded (integer codes)", ours=True),),
        lr_scale=3.0,
    ),
)
BY_KEY = {m.key: m for m in METHODS}
DEFAULT = tuple(BY_KEY)
