"""Jobs: the library used end to end on a real pretrained model, measured against the peers.

- ``distill``: MiniLM-L6 compiled with LR-QAT (or QA-LoRA) over GPTQ INT4, adapters distilled
  toward the fp32 model, folded, exported, and compared with RTN, GPTQ, onnxruntime's quantizer
  and the QLoRA merge (``lowrank-compiler demo``); its options in ``distill_config``, its table
  in ``distill_report``;
- ``code_search``: MiniLM-L6 fine-tuned to find Python functions from a sentence (options:
  ``code_search_config``; pairs built from installed modules: ``code_search_data``,
  ``code_pairs``, ``stdlib_modules``; loss and metrics: ``retrieval``), each way to INT4 a row
  (``code_search_methods``), the report (``code_search_report``)
  (``lowrank-compiler demo code-search``);
- ``encoder``: the pieces jobs share on a sentence encoder (embedding, the distillation loop,
  latency, onnxruntime's quantizer as the peer, the common options); ``memory``: bytes frozen
  and peak resident memory while training.

The library never imports a job; the command line starts them.
"""
