"""ONNX out and in: the exporter, the op translations, the ONNX passes, file reading.

- ``export``: ``torch.onnx`` export of a model, each layer as its kind says (``export_layer``,
  ``lowering``), then the ONNX stage, the metadata record and the atomic write;
- ``matmulnbits``, ``gather_block_quantized``, ``attention``: schemas and translations of our
  custom ops to onnxruntime's contrib ops;
- ``passes``: the ONNX pass contract (registry, verifier, dumps, ``OnnxPassError``), and one file
  per pass: ``share_tables`` (share-table-codes), ``split_form`` (split-form), ``qdq``
  (lower-to-qdq), ``skip_norm`` (fuse-skip-norm);
- ``file``: safe reading (``read_model``, ``read_metadata``); ``inspection``: what a file holds.
"""
