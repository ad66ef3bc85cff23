"""The LLM job from Python: fine-tune stories260K (or any HF causal LM with --model DIR) on Python
docstrings and comments, deploy every route to INT4 onnxruntime-genai folders, and compare.

    python examples/llm_finetune.py --steps 200 --out out/llm

The same as ``lowrank-compiler demo llm`` (same options); results.md in --out holds the table.
"""

from __future__ import annotations

import argparse

from lowrank_compiler.app.jobs import llm


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    llm.add_arguments(parser)
    return llm.run(llm.config_from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
