"""Numbers in, numbers out: the format vocabulary and the quantizers; imports no layer.

- ``formats``: each format fact, defined once (bit widths, group rule, zero-point forms, export
  formats, accuracy levels, the split correction) and the validators every option goes through;
- ``group``: asymmetric min-max group quantization, packing in MatMulNBits' layout, dequantize;
- ``gptq``: GPTQ's error-feedback rounding (``gptq(hessian)``: the quantizer a pass hands in);
- ``nf4``: QLoRA's NF4 codebook and block quantization;
- ``grid``: LR-QAT's fixed-point grid positions.
"""
