"""Instrumentation taps: on-device attention statistics and the one host callback per step.

The config is static at trace time: with `TapConfig(enabled=False)` (or None) the model and
sampler trace exactly the uninstrumented program. This module is the only one under
`vlmrl.instrument` that imports JAX.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from vlmrl.instrument.events import ATTN_STATS


@dataclasses.dataclass(frozen=True)
class TapConfig:
    """Static (hashable) instrumentation switches; part of the jit cache key."""

    enabled: bool = False
    attention_stats: bool = True
    top_k: int = 5
    # At prefill, also emit one AttentionMatrix of this layer (None: none); head None = mean.
    matrix_layer: int | None = None
    matrix_head: int | None = None
    matrix_max: int = 4096

    @property
    def stats_on(self) -> bool:
        return self.enabled and self.attention_stats


def attention_row_stats(probs_bhk, key_valid_bk, vision_bk):
    """Per head statistics of one attention row (the newest query), on device.

    Args:
      probs_bhk: float32 [B, H, K] softmax weights of the newest query over K key slots.
      key_valid_bk: bool [B, K], True where the key slot holds a real (non-pad) token.
      vision_bk: bool [B, K], True where the key is an image token.
    Returns:
      float32 [B, H, len(ATTN_STATS)]: focus = 1 - H/log(n_valid), max weight, share on
      vision tokens, share on the first valid (sink) token.
    """
    p = jnp.where(key_valid_bk[:, None, :], probs_bhk.astype(jnp.float32), 0.0)
    n_valid = jnp.maximum(key_valid_bk.sum(-1).astype(jnp.float32), 1.0)[:, None]  # [B,1]
    ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-30)), 0.0), axis=-1)
    focus = jnp.where(n_valid > 1, 1.0 - ent / jnp.log(jnp.maximum(n_valid, 2.0)), 1.0)
    mx = p.max(-1)
    vis = jnp.sum(jnp.where(vision_bk[:, None, :], p, 0.0), axis=-1)
    first = jnp.argmax(key_valid_bk, axis=-1)  # first valid slot (left padding)
    sink = jnp.take_along_axis(p, first[:, None, None].repeat(p.shape[1], axis=1), axis=-1)[..., 0]
    out = jnp.stack([jnp.clip(focus, 0.0, 1.0), mx, vis, sink], axis=-1)
    assert out.shape[-1] == len(ATTN_STATS)
    return out
