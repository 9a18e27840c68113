"""KV cache: one pytree of fixed shapes, so a jitted `lax.scan` can carry it.

Slots are absolute sequence indices shared by every row (prompts are left padded, so all rows
write the same slot each step); `valid` says which slots hold real tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    k: jax.Array  # [L, B, nkv, T, hd]
    v: jax.Array  # [L, B, nkv, T, hd]
    valid: jax.Array  # bool [B, T]: slot holds a real token (left padding and unwritten slots: False)
    vision: jax.Array  # bool [B, T]: slot holds an image token
    length: jax.Array  # int32 []: next slot to write == number of slots written
    rope_deltas: jax.Array  # int32 [B]: decode position = length + rope_deltas (all 3 mRoPE axes)

    @classmethod
    def init(cls, config, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        """An empty cache for `batch` rows of up to `max_len` tokens (prompt + generated)."""
        t = getattr(config, "text", config)
        if batch < 1 or max_len < 1:
            raise ValueError(f"KVCache needs batch >= 1 and max_len >= 1, got batch={batch}, max_len={max_len}")
        shape = (t.num_hidden_layers, batch, t.num_key_value_heads, max_len, t.head_dim)
        return cls(
            k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
            valid=jnp.zeros((batch, max_len), bool), vision=jnp.zeros((batch, max_len), bool),
            length=jnp.zeros((), jnp.int32), rope_deltas=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held on device by all leaves."""
        return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(self))
