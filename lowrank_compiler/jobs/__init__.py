"""Jobs: the library used end to end on a real pretrained model, measured against the peers.

- ``distill``: MiniLM-L6 compiled with QA-LoRA over GPTQ INT4, adapters distilled toward the
  fp32 model, folded, exported, and compared with RTN, GPTQ, onnxruntime's quantizer and the
  QLoRA merge (``lowrank-compiler demo``);
- ``encoder``: the pieces jobs share on a sentence encoder (embedding, the distillation loop,
  latency, onnxruntime's quantizer as the peer).

The library never imports a job; the command line starts them.
"""
