"""Models the command-line tests name as MODEL (``tests/factories.py:<function>``).

The file is run by ``lowrank_compiler.app.model_spec``, which puts this folder on ``sys.path``
while it runs, so the shared tiny models import as usual.
"""

from models import ids, tiny_gpt


def gpt():
    """The small GPT with example inputs: traced with torch.export, exportable to ONNX."""
    return tiny_gpt(seed=0), (ids(),)


def gpt_without_inputs():
    """No example inputs: traced with torch.fx, and export has nothing to run it with."""
    return tiny_gpt(seed=0)


def widths():
    """Input widths 172 and 40: partial last groups at group 32."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 172), nn.ReLU(), nn.Linear(172, 40), nn.ReLU(), nn.Linear(40, 8)
    )
    return model, (torch.randn(2, 3, 64),)
