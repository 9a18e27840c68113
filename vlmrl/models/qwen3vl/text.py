"""Qwen3-VL text decoder blocks (docs/qwen3vl.md §2) in Flax NNX, with HF parameter names.

Cast points mirror HF so bf16 tracks it: RMSNorm variance in fp32 and the cast back before the
weight multiply; attention scores in the activation dtype, softmax in fp32, cast back before @V.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from vlmrl.models.qwen3vl.rope import apply_rope

NEG_INF = float(jnp.finfo(jnp.float32).min)  # finite: fully masked (padding) rows stay NaN-free


class RMSNorm(nnx.Module):
    """y = w * cast(x * rsqrt(mean(x^2) + eps)); plain w (not 1+w), variance in fp32."""

    def __init__(self, dim: int, eps: float, dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = float(eps)

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
        return self.weight[...] * y


def _linear(din: int, dout: int, dtype, rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=False, dtype=dtype, param_dtype=dtype, rngs=rngs)


def attend(q, k, v, mask, want_probs: bool = False):
    """Grouped-query attention.

    q [B, S, nh, hd]; k, v [B, nkv, K, hd] (cache layout); mask bool [B, S, K] (True = may attend).
    Query head j reads kv head j // (nh/nkv), as HF's repeat_kv (repeat_interleave) does.
    Returns (out [B, S, nh*hd] in q's dtype, probs float32 [B, nh, S, K] or None).
    """
    B, S, nh, hd = q.shape
    nkv = k.shape[1]
    g = nh // nkv
    qg = q.reshape(B, S, nkv, g, hd)
    scores = jnp.einsum("bsngd,bntd->bngst", qg, k.astype(q.dtype)) * (hd ** -0.5)  # activation dtype, as HF
    scores = jnp.where(mask[:, None, None, :, :], scores.astype(jnp.float32), NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)  # fp32
    out = jnp.einsum("bngst,bntd->bsngd", probs.astype(q.dtype), v.astype(q.dtype))
    out = out.reshape(B, S, nh * hd)
    return out, (probs.reshape(B, nh, S, -1) if want_probs else None)


class Attention(nnx.Module):
    def __init__(self, tc, dtype=jnp.float32, *, rngs: nnx.Rngs):
        self.num_heads, self.num_kv_heads, self.head_dim = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads {self.num_heads} not a multiple of "
                             f"num_key_value_heads {self.num_kv_heads}")
        H, nh, nkv, hd = tc.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        self.q_proj = _linear(H, nh * hd, dtype, rngs)
        self.k_proj = _linear(H, nkv * hd, dtype, rngs)
        self.v_proj = _linear(H, nkv * hd, dtype, rngs)
        self.o_proj = _linear(nh * hd, H, dtype, rngs)
        # QK-norm: per head over hd, before RoPE; no norm on v.
        self.q_norm = RMSNorm(hd, tc.rms_norm_eps, dtype)
        self.k_norm = RMSNorm(hd, tc.rms_norm_eps, dtype)

    def __call__(self, x, cos, sin, mask, kv_store: Callable, want_probs: bool = False):
        """x [B, S, H]. kv_store(k_new, v_new) gets this step's keys/values in cache layout
        [B, nkv, S, hd] and returns the keys/values to attend over ([B, nkv, K, hd]): the same
        arrays for an uncached forward, the updated cache slice for decoding."""
        B, S, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(B, S, self.num_heads, self.head_dim))
        k = self.k_norm(self.k_proj(x).reshape(B, S, self.num_kv_heads, self.head_dim))
        v = self.v_proj(x).reshape(B, S, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = kv_store(k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
        out, probs = attend(q, keys, values, mask, want_probs)
        return self.o_proj(out), probs


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, tc, dtype=jnp.float32, *, rngs: nnx.Rngs):
        self.gate_proj = _linear(tc.hidden_size, tc.intermediate_size, dtype, rngs)
        self.up_proj = _linear(tc.hidden_size, tc.intermediate_size, dtype, rngs)
        self.down_proj = _linear(tc.intermediate_size, tc.hidden_size, dtype, rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, tc, dtype=jnp.float32, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(tc.hidden_size, tc.rms_norm_eps, dtype)
        self.self_attn = Attention(tc, dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(tc.hidden_size, tc.rms_norm_eps, dtype)
        self.mlp = MLP(tc, dtype, rngs=rngs)

    def __call__(self, x, cos, sin, mask, kv_store, want_probs: bool = False):
        a, probs = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_store, want_probs)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, probs


class TextModel(nnx.Module):
    """`model.language_model`: embed_tokens, layers, norm (the lm_head lives on Qwen3VL)."""

    def __init__(self, tc, dtype=jnp.float32, *, rngs: nnx.Rngs):
        self.embed_tokens = nnx.Embed(tc.vocab_size, tc.hidden_size, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(tc, dtype, rngs=rngs) for _ in range(tc.num_hidden_layers)])
        self.norm = RMSNorm(tc.hidden_size, tc.rms_norm_eps, dtype)

    def run_layers(self, x, cos, sin, mask, kv_store_for: Callable[[int], Callable],
                   deepstack: Tuple = (), visual_mask: Optional[jax.Array] = None,
                   want_probs: bool = False):
        """All decoder layers, then the final norm.

        deepstack[i] ([B, S, H], already gathered to token positions) is added after layer i at
        visual_mask positions (docs/qwen3vl.md §5.4). Returns (hidden [B, S, H], per-layer probs list).
        """
        all_probs = []
        for i, layer in enumerate(self.layers):
            x, probs = layer(x, cos, sin, mask, kv_store_for(i), want_probs)
            if i < len(deepstack):
                x = jnp.where(visual_mask[..., None], x + deepstack[i].astype(x.dtype), x)
            all_probs.append(probs)
        return self.norm(x), all_probs
