"""Rewrite passes, one per module, and their registry.

The passes register themselves when their modules are imported; the registry imports
them the first time a pass is looked up (``get_pass``, ``registered_passes``), so that
reading or printing a pipeline costs no pass's imports (the exporter pulls in onnxruntime).
``helpers/`` holds the compile-time code several passes share; it holds no pass.
"""

from .registry import (
    PassInfo,
    PassResult,
    get_pass,
    register_pass,
    registered_passes,
    unregister_pass,
)

__all__ = [
    "PassInfo",
    "PassResult",
    "get_pass",
    "register_pass",
    "registered_passes",
    "unregister_pass",
]
