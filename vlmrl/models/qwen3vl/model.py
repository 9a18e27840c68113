"""Qwen3VL: the full model (vision tower + text decoder + lm_head) with prefill and cached decode.

Parameter paths follow HF names
(model.language_model..., model.visual..., lm_head), so the loader is a name mapping.
`forward` and `decode_step` are pure functions of arrays (jittable, decode_step scannable);
`__call__` is the convenience entry point that does the host-side prep itself.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlmrl.models.qwen3vl.cache import KVCache
from vlmrl.models.qwen3vl.config import Qwen3VLConfig
from vlmrl.models.qwen3vl.rope import text_cos_sin
from vlmrl.models.qwen3vl.text import TextModel


class Qwen3VLModel(nnx.Module):
    """HF `model`: holds `language_model` and `visual`."""

    def __init__(self, config: Qwen3VLConfig, dtype, rngs: nnx.Rngs):
        from vlmrl.models.qwen3vl.vision import VisionTower  # sibling module, owned by MODEL-VISION

        self.language_model = TextModel(config.text, dtype, rngs=rngs)
        self.visual = VisionTower(config.vision, dtype=dtype, rngs=rngs)


def text_position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """Text-only mRoPE ids [3, B, S]: cumsum(mask) - 1 on all axes (padded slots get 0, masked anyway)."""
    mask = np.asarray(attention_mask).astype(np.int64)
    pos = np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)
    return np.broadcast_to(pos[None], (3,) + pos.shape).copy()


class Qwen3VL(nnx.Module):
    def __init__(self, config: Qwen3VLConfig, *, dtype=jnp.float32, rngs: Optional[nnx.Rngs] = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.model = Qwen3VLModel(config, dtype, rngs)
        tc = config.text
        # Tied models have no lm_head parameter at all: the embedding matrix is the output layer.
        self.lm_head = None if config.tie_word_embeddings else nnx.Linear(
            tc.hidden_size, tc.vocab_size, use_bias=False, dtype=dtype, param_dtype=dtype, rngs=rngs)

    # ---- pieces ------------------------------------------------------------------------------
    def _logits(self, h):
        if self.lm_head is None:
            return self.model.language_model.embed_tokens.attend(h)
        return self.lm_head(h)

    def _cos_sin(self, position_ids):
        tc = self.config.text
        return text_cos_sin(position_ids, tc.head_dim, tc.rope_theta, tc.mrope_section, self.dtype)

    # ---- jittable entry points -----------------------------------------------------------------
    def forward(self, input_ids, attention_mask, position_ids, pixel_values=None, vinputs=None,
                cache: Optional[KVCache] = None, tap=None):
        """Full causal forward over [B, S] (left padded). With a cache this is the prefill: K/V of
        all S positions go to slots [0, S), cache.length = S, rope_deltas = max valid position + 1 - S.
        position_ids [3, B, S] may be None for text-only input (then cumsum(mask) - 1).

        Returns (logits [B, S, V] in the model dtype, cache or None, aux dict).
        """
        ids = jnp.asarray(input_ids)
        B, S = ids.shape
        valid = jnp.ones((B, S), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        if position_ids is None:
            if pixel_values is not None:
                raise ValueError("forward with images needs position_ids from positions.get_rope_index")
            # text only: cumsum(mask) - 1 on all three mRoPE axes (padded slots are masked anyway)
            position_ids = jnp.broadcast_to(jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)[None], (3, B, S))
        position_ids = jnp.asarray(position_ids).astype(jnp.int32)
        lm = self.model.language_model
        x = lm.embed_tokens(ids)
        image_mask = ids == self.config.image_token_id
        deepstack = ()
        if pixel_values is not None:
            if vinputs is None:
                raise ValueError("forward got pixel_values without vinputs: build them with "
                                 "vision.prepare_vision_inputs (or use model.prepare_inputs)")
            embeds, ds_feats = self.model.visual(jnp.asarray(pixel_values), vinputs)
            # Row-major scatter (HF masked_scatter): the n-th image pad takes feature row n.
            # Padding patches (vinputs pad_to) come last, so the real rows are never displaced.
            row = jnp.clip(jnp.cumsum(image_mask.reshape(-1)) - 1, 0, embeds.shape[0] - 1).reshape(B, S)
            x = jnp.where(image_mask[..., None], embeds.astype(x.dtype)[row], x)
            deepstack = tuple(d.astype(x.dtype)[row] for d in ds_feats)
        cos, sin = self._cos_sin(position_ids)
        mask = jnp.tril(jnp.ones((S, S), bool))[None] & valid[:, None, :]  # [B, S(q), S(k)]
        want = tap is not None and tap.enabled
        if cache is None:
            store = lambda i: (lambda k, v: (k, v))  # noqa: E731  attend over this call's own keys
            h, probs = lm.run_layers(x, cos, sin, mask, store, deepstack, image_mask, want)
            new_cache = None
        else:
            if cache.max_len < S:
                raise ValueError(f"prompt of {S} tokens does not fit a KVCache of {cache.max_len} slots")
            kv = {"k": cache.k, "v": cache.v}

            def store(i):
                def write(k, v):  # prefill attends over its own keys; the cache only keeps them
                    kv["k"] = kv["k"].at[i, :, :, :S].set(k.astype(kv["k"].dtype))
                    kv["v"] = kv["v"].at[i, :, :, :S].set(v.astype(kv["v"].dtype))
                    return k, v
                return write

            h, probs = lm.run_layers(x, cos, sin, mask, store, deepstack, image_mask, want)
            masked_pos = jnp.where(valid[None], position_ids, jnp.iinfo(jnp.int32).min)
            deltas = (masked_pos.max(axis=(0, 2)) + 1 - S).astype(jnp.int32)
            new_cache = cache.replace(
                k=kv["k"], v=kv["v"],
                valid=cache.valid.at[:, :S].set(valid).at[:, S:].set(False),
                vision=cache.vision.at[:, :S].set(image_mask & valid).at[:, S:].set(False),
                length=jnp.asarray(S, jnp.int32), rope_deltas=deltas)
        logits = self._logits(h)
        aux = {}
        if want:
            aux = _prefill_aux(probs, valid, image_mask & valid)
        return logits, new_cache, aux

    def decode_step(self, token_ids, cache: KVCache, tap=None):
        """One token per row at slot cache.length, position cache.length + rope_deltas on all three
        mRoPE axes. Returns (logits [B, V], cache with length + 1, aux).

        The slot index is traced, so overflowing the cache cannot raise here: size it for
        prompt + generated tokens (dynamic_update_slice would clamp to the last slot).
        """
        tok = jnp.asarray(token_ids).reshape(-1, 1)
        B = tok.shape[0]
        if B != cache.batch:
            raise ValueError(f"decode_step got {B} token ids for a cache of batch {cache.batch}")
        idx = cache.length
        lm = self.model.language_model
        x = lm.embed_tokens(tok)
        pos = jnp.broadcast_to((idx + cache.rope_deltas)[None, :, None], (3, B, 1))
        cos, sin = self._cos_sin(pos)
        valid = jax.lax.dynamic_update_slice(cache.valid, jnp.ones((B, 1), bool), (0, idx))
        vision = jax.lax.dynamic_update_slice(cache.vision, jnp.zeros((B, 1), bool), (0, idx))
        mask = valid[:, None, :]  # [B, 1, T]: every written real slot, this one included
        kv = {"k": cache.k, "v": cache.v}

        def store(i):
            def write(k, v):  # [B, nkv, 1, hd] into slot idx of layer i; attend over the layer's T slots
                kv["k"] = jax.lax.dynamic_update_slice(kv["k"], k[None].astype(kv["k"].dtype), (i, 0, 0, idx, 0))
                kv["v"] = jax.lax.dynamic_update_slice(kv["v"], v[None].astype(kv["v"].dtype), (i, 0, 0, idx, 0))
                return kv["k"][i], kv["v"][i]
            return write

        want = tap is not None and tap.enabled
        h, probs = lm.run_layers(x, cos, sin, mask, store, (), None, want)
        logits = self._logits(h)[:, 0]
        new_cache = cache.replace(k=kv["k"], v=kv["v"], valid=valid, vision=vision, length=idx + 1)
        aux = {}
        if want:
            aux = _decode_aux(probs, valid, vision)
        return logits, new_cache, aux

    # ---- convenience ---------------------------------------------------------------------------
    def __call__(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None):
        """logits [B, S, V] for host inputs (numpy or lists); does position/vision prep itself."""
        ids, mask, pos, pv, vin = self.prepare_inputs(input_ids, pixel_values, image_grid_thw, attention_mask)
        logits, _, _ = _jit_forward(self, ids, mask, pos, pv, vin)
        return logits

    def prepare_inputs(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None):
        """Host-side prep: (ids [B,S] int32, mask [B,S] int32, position_ids [3,B,S], pixels, vinputs)."""
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"input_ids must be integer [B, S] (or [S]), got {ids.dtype} {ids.shape}")
        mask = np.ones(ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask)
        if mask.size != ids.size:
            raise ValueError(f"attention_mask has shape {mask.shape} but input_ids has shape {ids.shape}")
        mask = mask.reshape(ids.shape).astype(np.int32)
        V = self.config.text.vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise ValueError(f"token ids must lie in [0, {V}); got min {ids.min()} max {ids.max()}")
        if ((ids == self.config.video_token_id) & (mask > 0)).any():
            raise ValueError(f"input_ids hold video pad tokens ({self.config.video_token_id}); video input is "
                             "not supported")
        n_pads = int(((ids == self.config.image_token_id) & (mask > 0)).sum())
        if (pixel_values is None) != (image_grid_thw is None):
            raise ValueError("pixel_values and image_grid_thw must be given together")
        if pixel_values is None:
            if n_pads:
                raise ValueError(f"input_ids hold {n_pads} image pad tokens but no pixel_values were given")
            return ids.astype(np.int32), mask, text_position_ids(mask), None, None
        from vlmrl.models.qwen3vl import positions, vision

        grid = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
        merge = self.config.vision.spatial_merge_size
        want_pads = int(grid.prod(axis=1).sum()) // (merge * merge)
        if n_pads != want_pads:
            raise ValueError(f"input_ids hold {n_pads} image pad tokens but image_grid_thw {grid.tolist()} "
                             f"needs {want_pads}")
        pv = np.asarray(pixel_values, dtype=np.float32)
        pos, _ = positions.get_rope_index(ids, grid, mask, self.config)
        vin = vision.prepare_vision_inputs(grid, self.config.vision)
        return ids.astype(np.int32), mask, np.asarray(pos, np.int32), pv, vin


@nnx.jit(static_argnames=("tap",))
def _jit_forward(model, ids, mask, pos, pv, vin, tap=None):
    return model.forward(ids, mask, pos, pv, vin, None, tap)


def _prefill_aux(probs, valid, vision):
    """Raw attention for the taps (which reduce and pool it): per layer the newest query's
    row [B, H, S] (the last position), the full probs [B, H, S, S], and which keys are real
    and which are image tokens."""
    return {"attn_rows": tuple(p[:, :, -1, :] for p in probs), "attn_probs": tuple(probs),
            "key_valid": valid, "key_vision": vision}


def _decode_aux(probs, valid, vision):
    """Raw newest-query rows [B, H, T] per layer over the cache's T slots; the taps compute
    statistics only inside their emit branch, so steps that do not emit pay nothing."""
    return {"attn_rows": tuple(p[:, :, 0, :] for p in probs), "key_valid": valid, "key_vision": vision}


# ---- reference generation loop (the scan sampler lives in vlmrl.core.sampling) -----------------
@functools.partial(jax.jit, static_argnames=("graphdef", "tap"))
def prefill_fn(graphdef, state, ids, mask, pos, pv, vin, cache, tap=None):
    """Pure jitted prefill over split model state (nnx.split(model))."""
    return nnx.merge(graphdef, state).forward(ids, mask, pos, pv, vin, cache, tap)


@functools.partial(jax.jit, static_argnames=("graphdef", "tap"), donate_argnames=("cache",))
def decode_fn(graphdef, state, token_ids, cache, tap=None):
    """Pure jitted decode_step over split model state; the cache buffer is donated (updated in place)."""
    return nnx.merge(graphdef, state).decode_step(token_ids, cache, tap)
