"""The application: what runs the library for a user, and which the library never imports.

- ``cli``: the ``lowrank-compiler`` command line (also ``python -m lowrank_compiler``): its
  options in ``cli_parser``, its commands in ``commands`` and ``commands_genai``;
- ``compiled_dir``: the directory ``compile`` writes and ``fold``, ``export``, ``inspect`` read;
- ``model_spec``: the MODEL argument (an HF directory, ``file.py:factory``, ``minilm``);
- ``pretrained``: the MiniLM encoder shipped as a package; ``toy``: a small hand-written GPT;
- ``data/``: the distillation job's sentences; ``jobs/``: the demo jobs (distillation, code search).
"""
