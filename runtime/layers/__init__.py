"""The layers a compiled model runs: integer bases, adapter layers, and their torch custom ops.

Every layer kind follows one protocol (``protocol.py``) and registers itself when its module
imports; importing this package registers the built-in kinds:

    IntLinear     int_linear.py    group-quantized integer weights (op: int_linear_op.py)
    GridBase      grid_base.py     LR-QAT's frozen grid positions
    NF4Linear     nf4.py           QLoRA's NF4 base
    IntEmbedding  int_embedding.py an INT4 vocabulary table (op: int_embedding_op.py)
    LoRALinear    lora.py          LoRA over a float or NF4 base
    QALoRALinear  qalora.py        group-pooled adapters over an IntLinear
    LRQATLinear   lrqat.py         adapters inside the rounding of a GridBase (op: lrqat_op.py)

``attention_op.py`` holds the fused decoder ops the genai export lowers to (GQA, RMSNorm), and
``linear_kinds.py`` what counts as a linear layer (``nn.Linear``, GPT-2's ``Conv1D``).
"""

from .grid_base import GridBase
from .int_embedding import IntEmbedding
from .int_linear import IntLinear
from .lora import LoRALinear
from .lrqat import LRQATLinear
from .nf4 import NF4Linear
from .protocol import (
    AdapterLayer,
    FoldForm,
    Layer,
    QuantizedLinear,
    is_layer,
    is_quantized_linear,
    layer_kinds,
    register_layer,
    unregister_layer,
)
from .qalora import QALoRALinear

__all__ = [
    "AdapterLayer",
    "FoldForm",
    "GridBase",
    "IntEmbedding",
    "IntLinear",
    "LRQATLinear",
    "Layer",
    "LoRALinear",
    "NF4Linear",
    "QALoRALinear",
    "QuantizedLinear",
    "is_layer",
    "is_quantized_linear",
    "layer_kinds",
    "register_layer",
    "unregister_layer",
]
