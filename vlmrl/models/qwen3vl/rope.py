"""Text rotary embedding: interleaved multimodal RoPE (docs/qwen3vl.md §3).

Angles, cos and sin are computed in fp32 (positions reach 262k with theta 5e6) and only then
cast to the activation dtype, which is where HF applies them.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax.numpy as jnp
import numpy as np


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """theta^(-2j/hd) for j < hd/2, fp32 (same arithmetic as HF's default rope init)."""
    exps = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(theta) ** exps)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def mrope_axis_of_freq(head_dim: int, section: Sequence[int]) -> np.ndarray:
    """Which position axis (0=T, 1=H, 2=W) drives each frequency j < hd/2.

    Interleaved rule: H if j%3==1 and j<3*section[1]; W if j%3==2 and j<3*section[2]; else T.
    section[0] is never read (the counts for T are whatever is left), as in HF.
    """
    section = tuple(int(s) for s in section)
    axis = np.zeros(head_dim // 2, dtype=np.int32)
    for j in range(head_dim // 2):
        if j % 3 == 1 and j < 3 * section[1]:
            axis[j] = 1
        elif j % 3 == 2 and j < 3 * section[2]:
            axis[j] = 2
    return axis


def text_cos_sin(position_ids, head_dim: int, theta: float, section: Sequence[int], dtype):
    """cos, sin [B, S, hd] in `dtype` from mRoPE position ids [3, B, S] (int).

    Each frequency takes its position from one axis; the product pos*inv_freq is a single fp32
    multiply, bit-identical to HF's (its matmul has an inner dimension of 1).
    """
    axis = mrope_axis_of_freq(head_dim, tuple(section))
    pos = jnp.asarray(position_ids).astype(jnp.float32)  # [3,B,S]
    pos_sel = jnp.moveaxis(pos[axis], 0, -1)  # [B,S,hd/2]: position of frequency j's axis
    freqs = pos_sel * jnp.asarray(inv_freq(head_dim, theta))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def rotate_half(x):
    """Split-halves (NeoX) rotation: concat(-x2, x1)."""
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x, cos, sin):
    """x [B, S, heads, hd]; cos/sin [B, S, hd] broadcast over heads; computed in x's dtype."""
    c = cos[:, :, None, :].astype(x.dtype)
    s = sin[:, :, None, :].astype(x.dtype)
    return x * c + rotate_half(x) * s
