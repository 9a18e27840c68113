"""Names of the keys along a pytree path, one way for everything that names a parameter.

`jax.tree_util` paths hold DictKey (`.key`), GetAttrKey (`.name`) and SequenceKey (`.idx`)
entries; the checkpoint (orbax's leaf names), the mesh's sharding rules and the update
taps' layer rows all read a parameter's name from them.
"""
from __future__ import annotations

from typing import Tuple


def key_parts(path) -> Tuple[str, ...]:
    """('model', 'layers', '0', 'q_proj', 'kernel', 'value') for a tree key path."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return tuple(parts)
