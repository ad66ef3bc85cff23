"""Compile-time helpers the passes share; this package holds no pass.

- ``graph``: the graph the passes rewrite (``gm.meta`` keys, ``LeafTracer``, module swaps
  and their journal, ``inline_call``);
- ``select``: the module-name pattern language and ``TargetError``;
- ``rewrite``: rank checks, quantization plans, layer swaps;
- ``moments``: calibration statistics (each layer's input second moment) for GPTQ.

Imports ``runtime`` and ``torch.fx``; never a pass, never the API.
"""
