"""lowrank-compiler: compiler-style LoRA / QA-LoRA rewriting of PyTorch Transformers.

import lowrank_compiler as lrc
model = lrc.compile(model, lrc.Policy(rank=8, target=["q_proj", "v_proj"]))
print(lrc.summary(model))
"""

from .adapters import load_adapters, save_adapters
from .api import CompileInfo, compile, compile_info, fold
from .dump_draw import layer_svg
from .errors import LintError, ModelSpecError, PassError, PassInputError, PipelineError, TraceError
from .export import OnnxReport, export_onnx, inspect_onnx
from .genai import export_genai
from .genai_adapters import export_adapter
from .hf_trainer import adapter_checkpoints
from .lint import lint
from .manager import PassManager
from .passes.helpers.embeddings import quantize_embeddings
from .passes.helpers.select import TargetError
from .peft_io import load_peft_adapter, peft_policy, save_peft_adapter
from .pipeline_text import PassSpec, Pipeline
from .policy import Override, Policy
from .runtime.errors import (
    AdapterError,
    ExportError,
    LowRankError,
    ModelFileError,
    OutputError,
    PolicyError,
)
from .summary import LayerRow, Summary, summary
from .trace import trace

__version__ = "0.1.0"

__all__ = [
    "layer_svg",
    "AdapterError",
    "adapter_checkpoints",
    "CompileInfo",
    "ExportError",
    "LayerRow",
    "LintError",
    "LowRankError",
    "ModelSpecError",
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
    "export_adapter",
    "export_genai",
    "export_onnx",
    "inspect_onnx",
    "OnnxReport",
    "fold",
    "lint",
    "load_adapters",
    "save_adapters",
    "load_peft_adapter",
    "peft_policy",
    "quantize_embeddings",
    "save_peft_adapter",
    "summary",
    "trace",
]
