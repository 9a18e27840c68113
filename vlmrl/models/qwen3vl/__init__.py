"""Qwen3-VL in Flax NNX: `from vlmrl.models.qwen3vl import Qwen3VL, Qwen3VLConfig, load_hf_checkpoint, KVCache`.

Names resolve lazily (PEP 562) so importing the package (e.g. for the config alone) does not
pull in JAX/Flax.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Qwen3VL": "vlmrl.models.qwen3vl.model",
    "Qwen3VLConfig": "vlmrl.models.qwen3vl.config",
    "KVCache": "vlmrl.models.qwen3vl.cache",
    "load_hf_checkpoint": "vlmrl.models.qwen3vl.load",
    "save_hf_checkpoint": "vlmrl.models.qwen3vl.load",
    "CheckpointError": "vlmrl.models.qwen3vl.load",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
