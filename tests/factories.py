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
