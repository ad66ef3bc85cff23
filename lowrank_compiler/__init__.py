"""lowrank-compiler: compiler-style LoRA / QA-LoRA rewriting of PyTorch Transformers.

    import lowrank_compiler as lrc
    model = lrc.compile(model, lrc.Policy(rank=8, target=["q_proj", "v_proj"]))
    print(lrc.summary(model))
"""

from .api import CompileInfo, compile, compile_info, fold
from .export import OnnxReport, export_onnx, inspect_onnx
from .pipeline import PassManager, PassSpec, Pipeline, lint
from .policy import Override, Policy
from .runtime.errors import (
    LintError,
    LowRankError,
    ModelFileError,
    OutputError,
    PassError,
    PassInputError,
    PipelineError,
    PolicyError,
    TargetError,
    TraceError,
)
from .summary import LayerRow, Summary, summary
from .trace import trace

__version__ = "0.1.0"

__all__ = [
    "CompileInfo",
    "LayerRow",
    "LintError",
    "LowRankError",
    "ModelFileError",
    "OutputError",
    "Override",
    "PassError",
    "PassInputError",
    "PassManager",
    "PassSpec",
    "Pipeline",
    "PipelineError",
    "Policy",
    "PolicyError",
    "Summary",
    "TargetError",
    "TraceError",
    "compile",
    "compile_info",
    "export_onnx",
    "inspect_onnx",
    "OnnxReport",
    "fold",
    "lint",
    "summary",
    "trace",
]
