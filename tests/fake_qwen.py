"""A tiny stand-in for Qwen3VL that follows the Model API contract (forward / decode_step /
KVCache / aux), so sampler and tap tests do not depend on the real model's numerics.

Real attention over a real KV cache (causal, left-padding aware, GQA), no RoPE, no vision.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from vlmrl.models.qwen3vl.config import Qwen3VLConfig


@struct.dataclass
class FakeCache:
    k: jax.Array
    v: jax.Array
    valid: jax.Array
    vision: jax.Array
    length: jax.Array
    rope_deltas: jax.Array

    @classmethod
    def init(cls, config, batch, max_len, dtype=jnp.float32):
        t = config.text
        shape = (t.num_hidden_layers, batch, t.num_key_value_heads, max_len, t.head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), valid=jnp.zeros((batch, max_len), bool),
                   vision=jnp.zeros((batch, max_len), bool), length=jnp.int32(0),
                   rope_deltas=jnp.zeros((batch,), jnp.int32))


def fake_rope_index(input_ids, image_grid_thw, attention_mask, config):
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    pos = np.clip(np.cumsum(mask, -1) - 1, 0, None).astype(np.int32)
    deltas = (pos.max(-1) + 1 - input_ids.shape[1]).astype(np.int32)
    return np.broadcast_to(pos[None], (3,) + pos.shape).copy(), deltas


class FakeQwen(nnx.Module):
    def __init__(self, config: Qwen3VLConfig, *, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        t = config.text
        self.config = config
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (t.vocab_size, t.hidden_size)) * 0.5)
        L, D, H, KV, hd = t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim
        self.wq = nnx.Param(jax.random.normal(rngs.params(), (L, D, H * hd)) * 0.3)
        self.wk = nnx.Param(jax.random.normal(rngs.params(), (L, D, KV * hd)) * 0.3)
        self.wv = nnx.Param(jax.random.normal(rngs.params(), (L, D, KV * hd)) * 0.3)
        self.wo = nnx.Param(jax.random.normal(rngs.params(), (L, H * hd, D)) * 0.3)

    def _layers(self, x, cache, q_slots, tap):
        """x [B,Q,D] for the queries in cache slots q_slots [Q]; keys: every slot <= the query's."""
        t = self.config.text
        B, Q, _ = x.shape
        H, KV, hd = t.num_attention_heads, t.num_key_value_heads, t.head_dim
        T = cache.k.shape[3]
        allow = (jnp.arange(T)[None, None, :] <= q_slots[None, :, None]) & cache.valid[:, None, :]  # [B,Q,T]
        rows, mats = [], []
        k_all, v_all = cache.k, cache.v
        for layer in range(t.num_hidden_layers):
            q = (x @ self.wq[layer]).reshape(B, Q, H, hd)
            k = (x @ self.wk[layer]).reshape(B, Q, KV, hd).transpose(0, 2, 1, 3)
            v = (x @ self.wv[layer]).reshape(B, Q, KV, hd).transpose(0, 2, 1, 3)
            k_all = jax.lax.dynamic_update_slice(k_all, k[None], (layer, 0, 0, q_slots[0], 0))
            v_all = jax.lax.dynamic_update_slice(v_all, v[None], (layer, 0, 0, q_slots[0], 0))
            kk = jnp.repeat(k_all[layer], H // KV, axis=1)
            vv = jnp.repeat(v_all[layer], H // KV, axis=1)
            s = jnp.einsum("bqhd,bhkd->bhqk", q, kk) / np.sqrt(hd)
            s = jnp.where(allow[:, None], s, -1e30)
            p = jax.nn.softmax(s, axis=-1)
            x = x + jnp.einsum("bhqk,bhkd->bqhd", p, vv).reshape(B, Q, H * hd) @ self.wo[layer]
            if tap is not None and tap.enabled:  # the real model's contract: raw rows, taps reduce
                rows.append(p[:, :, -1])
                mats.append(p[:, :, :, :Q])
        aux = {}
        if rows:
            aux = {"attn_rows": tuple(rows), "key_valid": cache.valid & (jnp.arange(T) <= q_slots[-1]),
                   "key_vision": cache.vision, "attn_probs": tuple(mats)}
        logits = x @ self.embed[...].T
        return logits, k_all, v_all, aux

    def forward(self, input_ids, attention_mask, position_ids, pixel_values=None, vinputs=None, cache=None, tap=None):
        B, S = input_ids.shape
        valid = cache.valid.at[:, :S].set(attention_mask.astype(bool))
        vision = cache.vision.at[:, :S].set(input_ids == self.config.image_token_id)
        cache = cache.replace(valid=valid, vision=vision)
        logits, k, v, aux = self._layers(self.embed[...][input_ids], cache, jnp.arange(S), tap)
        return logits, cache.replace(k=k, v=v, length=jnp.int32(S)), aux

    def decode_step(self, token_ids, cache, tap=None):
        slot = cache.length
        cache = cache.replace(valid=cache.valid.at[:, slot].set(True), vision=cache.vision.at[:, slot].set(False))
        logits, k, v, aux = self._layers(self.embed[...][token_ids][:, None], cache, slot[None], tap)
        return logits[:, 0], cache.replace(k=k, v=v, length=slot + 1), aux

    def full_logits(self, ids_row):
        """Reference: uncached forward of one unpadded sequence, logits of the last position."""
        ids = jnp.asarray(ids_row)[None]
        cache = FakeCache.init(self.config, 1, ids.shape[1])
        logits, _, _ = self.forward(ids, jnp.ones_like(ids), None, cache=cache)
        return np.asarray(logits[0, -1])


def tiny_fake(seed: int = 0, vocab: int = 152000):
    cfg = Qwen3VLConfig.tiny(vocab_size=vocab)
    return FakeQwen(cfg, rngs=nnx.Rngs(seed))


def fake_sampler_kwargs():
    return dict(cache_init=FakeCache.init, rope_index=fake_rope_index, vision_prep=lambda g, c, pad_to=None: None)
