"""The code-search job's methods: how each row's model is built, and how it is deployed.

One ``Method`` per way of getting an INT model (or the fp32 references): its policy
fields (``None``: the pretrained model as is), whether it trains, whether the trained
PyTorch model is measured too, and its deployments — functions from the (trained) model
to the module exported to ONNX, each a row computed by onnxruntime. Adding a method is
one entry in ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...api import compile, fold
from ..pretrained import load_minilm


@dataclass(frozen=True)
class Deploy:
    label: str
    build: Callable  # (model, job) -> the module to export; job: code_search.Context
    exact: bool = (
        False  # deploys the trained model exactly (no re-rounding): a candidate for "ours"
    )
    integer: bool = (
        True  # its linear layers are integer (MatMulNBits): timed at accuracy level 4 too
    )


@dataclass(frozen=True)
class Method:
    key: str  # the --methods name
    label: str
    policy: dict | None  # Policy fields beyond bits / group_size / rank / alpha; None: fp32 as is
    train: bool = False
    torch_row: str | None = None  # label of the trained PyTorch model's row (None: no such row)
    deploys: tuple[Deploy, ...] = ()
    lr_scale: float = (
        1.0  # its rates are the search's times this: LR-QAT's adapter is in grid units
    )

    @property
    def gptq(self) -> bool:
        return bool(self.policy) and self.policy.get("quantizer") == "gptq"


def as_is(model, job):
    return model


def folded(model, job):
    return fold(model, zeros="split")


def merged_then_gptq(model, job):
    """Fine-tune in full precision, quantize after: the merged fp32 weights rounded by GPTQ,
    calibrated on the same training documents as every GPTQ row."""
    fresh, _ = load_minilm()
    fresh.load_state_dict(fold(model).state_dict())
    return compile(
        fresh,
        job.policy({"method": "rtn", "quantizer": "gptq"}),
        example_inputs=job.example,
        example_kwargs=job.kwargs,
        calibration=job.calibration,
    )


OURS = {
    "quantizer": "gptq",
    "train_scales": True,
}  # our methods start from GPTQ and train their scales

METHODS = (
    Method(
        "fp32",
        "fp32 base (no tuning)",
        None,
        deploys=(Deploy("fp32 base (no tuning)", as_is, integer=False),),
    ),
    Method(
        "rtn",
        "RTN {int} (no tuning)",
        {"method": "rtn"},
        deploys=(Deploy("RTN {int} (no tuning)", as_is),),
    ),
    Method(
        "gptq",
        "GPTQ {int} (no tuning)",
        {"method": "rtn", "quantizer": "gptq"},
        deploys=(Deploy("GPTQ {int} (no tuning)", as_is),),
    ),
    Method(
        "lora",
        "fp32 + LoRA",
        {"method": "lora"},
        train=True,
        deploys=(
            Deploy("fp32 + LoRA, merged (upper bound)", folded, integer=False),
            Deploy("fp32 + LoRA, merged, then GPTQ {int}", merged_then_gptq),
        ),
    ),
    Method(
        "qlora",
        "QLoRA (NF4 + LoRA)",
        {"method": "qlora"},
        train=True,
        torch_row="QLoRA (NF4 + LoRA), PyTorch",
        deploys=(Deploy("QLoRA, merged + requantized to {int}", folded),),
    ),
    Method(
        "qalora",
        "QA-LoRA + trained scales over GPTQ",
        {**OURS, "method": "qalora"},
        train=True,
        torch_row="QA-LoRA + trained scales over GPTQ, PyTorch",
        deploys=(
            Deploy(
                "QA-LoRA + trained scales over GPTQ, folded (split zeros), {int}",
                folded,
                exact=True,
            ),
        ),
    ),
    Method(
        "qalora-int",
        "QA-LoRA + trained scales over GPTQ, integer zeros",
        {**OURS, "method": "qalora", "zero_point": "int"},
        train=True,
        deploys=(
            Deploy(
                "QA-LoRA + trained scales over GPTQ, integer zeros, folded, {int}",
                folded,
                exact=True,
            ),
        ),
    ),
    Method(
        "lrqat",
        "LR-QAT + trained scales over GPTQ",
        {**OURS, "method": "lrqat"},
        train=True,
        torch_row="LR-QAT + trained scales over GPTQ, PyTorch",
        deploys=(Deploy("LR-QAT + trained scales over GPTQ, folded, {int}", folded, exact=True),),
        lr_scale=10.0,
    ),  # 3e-4 ... 3e-3 moved no code in 50 steps (README)
)
BY_KEY = {m.key: m for m in METHODS}
DEFAULT = tuple(m.key for m in METHODS)
