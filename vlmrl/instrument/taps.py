"""Instrumentation taps: on-device attention statistics and the one host callback per step.

The config is static at trace time: with `TapConfig(enabled=False)` (or None) the model and
sampler trace exactly the uninstrumented program. This module is the only one under
`vlmrl.instrument` that imports JAX.

Device side (called while tracing): `decode_payload` / `prefill_payload` reduce what one step
shows to a few KB (attention statistics are reduced there, inside the emit branch, so steps
that do not emit pay nothing for them), and `gated_emit` wraps ONE host callback per emitted
step in a `lax.cond` on an unbatched step counter and a traced stride (changing the stride
never recompiles). The callback is `tap_callback`, jax.debug.callback's unordered effect
without its ~170 us per-call runtime wrapper (see `_make_tap_primitive`). The host side,
`tap_host.TapHost`, turns the payloads into events on a `Bus`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np
from jax import lax, ops

from vlmrl.instrument import tap_callback
from vlmrl.instrument.events import ATTN_STATS
from vlmrl.instrument.limits import IMAGE_ATTN_BYTES, IMAGE_ATTN_TOKENS
from vlmrl.instrument.tap_callback import CALLBACK_PRIMITIVES, emit  # noqa: F401  (re-exported)


# Largest pooled matrix side whose float32 base64 line (n^2 * 4 * 4/3 bytes plus token texts)
# stays well inside the 16 MiB line cap of every log reader.
MATRIX_MAX_LIMIT = 1448


@dataclasses.dataclass(frozen=True)
class TapConfig:
    """Static (hashable) instrumentation switches; part of the jit cache key."""

    enabled: bool = False
    attention_stats: bool = True
    top_k: int = 5
    # At prefill, also emit one AttentionMatrix of this layer (None: none); head None = mean.
    matrix_layer: int | None = None
    matrix_head: int | None = None
    # Pooled side of that matrix. It travels as one log line: 1024^2 float32 is 4 MiB (5.6 MB in
    # base64), inside the readers' 16 MiB line cap (log_read.LINE_MAX); 4096 would be 89 MB and
    # every reader would skip it as an over-long line, so sides above MATRIX_MAX_LIMIT are refused.
    matrix_max: int = 1024
    # Send the watched sequence's newest attention row (mean over layers and heads, float16)
    # with every emit; it feeds the token explorer and costs 2 bytes per cached slot.
    attention_row: bool = True
    # Sequences published per emit: the payload is bounded by this, not by the batch size.
    max_rows: int = 4
    # The sequence whose attention row and prefill matrix are sent.
    watch_row: int = 0
    # The PPO update's own taps (vlmrl.core.update_stats): per layer, head, vision block and
    # merger statistics of what the update changed, one host callback per update.
    update_stats: bool = True
    # The image view (key v): with every emit, the watched row's newest query over its image
    # tokens (per layer, mean over heads, float16) and its share on them (float32 per layer).
    image_attention: bool = True

    @property
    def stats_on(self) -> bool:
        return self.enabled and self.attention_stats

    def __post_init__(self):
        if self.top_k < 1 or self.max_rows < 1 or self.matrix_max < 1 or self.watch_row < 0:
            raise ValueError(f"TapConfig: top_k, max_rows, matrix_max must be >= 1 and watch_row >= 0, got {self}")
        if self.matrix_max > MATRIX_MAX_LIMIT:
            raise ValueError(f"TapConfig: matrix_max {self.matrix_max} > {MATRIX_MAX_LIMIT}: the matrix "
                             "would not fit one log line")


def is_on(tap: Optional[TapConfig]) -> bool:
    return tap is not None and tap.enabled


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


# ---- device side ---------------------------------------------------------------------------

def _rows(tap: TapConfig, batch: int) -> int:
    return min(batch, tap.max_rows)


def top_k_exact(x_bv, k: int, block: int = 1024):
    """lax.top_k over a large last axis via the k best blocks: every one of the k largest
    entries lies in a block whose maximum is among the k largest block maxima. Same result,
    about a third cheaper on CPU for a 152k vocabulary (one max pass, then small top_ks)."""
    B, V = x_bv.shape
    if V <= 4 * block or k > V // block:
        return lax.top_k(x_bv, k)
    # a block size that divides V (152000 = 152 x 1000) makes the reshape free: no padded copy
    block = next((b for d in range(block // 2) for b in (block - d, block + d) if V % b == 0), block)
    xp = x_bv if V % block == 0 else jnp.pad(x_bv, ((0, 0), (0, (-V) % block)), constant_values=-jnp.inf)
    xp = xp.reshape(B, -1, block)
    _, blocks = lax.top_k(xp.max(-1), k)  # [B, k]
    cand = jnp.take_along_axis(xp, blocks[:, :, None], axis=1).reshape(B, k * block)
    vals, j = lax.top_k(cand, k)
    return vals, jnp.take_along_axis(blocks, j // block, axis=-1) * block + j % block


def attention_for_emit(tap: TapConfig, aux: dict, rows: int, watch: int):
    """(stats float32 [L, rows, H, 4] or None, watched row [T] or None) for one emit.

    The model hands over its raw newest-query rows (aux "attn_rows": per layer [B, H, T],
    with "key_valid"/"key_vision" [B, T]); the statistics are computed here, i.e. inside
    the emit branch and only for the published rows, so steps that do not emit pay nothing.
    """
    raw = aux.get("attn_rows")
    if raw is None:
        return None, None
    valid, vision = aux["key_valid"][:rows], aux["key_vision"][:rows]
    stats = jnp.stack([attention_row_stats(p[:rows], valid, vision) for p in raw]) if tap.stats_on else None
    row = jnp.mean(jnp.stack([p[watch].astype(jnp.float32) for p in raw]), axis=(0, 1)) if tap.attention_row else None
    return stats, row


def image_slots(tokens: int, layers: int) -> int:
    """Image tokens the image view's taps gather (static): at most `tokens` (the sampler's
    bound on the image tokens), IMAGE_ATTN_TOKENS, and what fits IMAGE_ATTN_BYTES of float16
    over `layers` layers (292 at the 2B shape's 28); 0 when there is no image."""
    return max(0, min(int(tokens), IMAGE_ATTN_TOKENS, IMAGE_ATTN_BYTES // (2 * max(int(layers), 1))))


def same(x):
    """The identity: `whole` on one device, where nothing is sharded."""
    return x


def image_attention(aux: dict, watch: int, slots: int, cells, whole: Callable = same):
    """(float16 [L, slots], float32 [L]) for the image view, on device: per layer, the mean
    over heads of the watched row's newest query on its image, summed into `slots` cells,
    and its share on all the row's image tokens.

    cells: int32 [n] (traced), the cell of each of the row's first n image tokens in sequence
    order (the host pools f x f merged patches into one cell when the image has more tokens
    than `slots`: `core.image_context.pool_cells`); a cell of `slots` or more is dropped.
    `slots` is static (`image_slots`). whole: a sharded program's constraint that replicates
    an array (identity on one device). The watched row's slices go through it before the
    gather of its image tokens and the segment sum: left to itself, GSPMD split that gather
    over the mesh and on data=4 could only reach its chosen split by an "involuntary full
    rematerialization" (XLA's warning). Replicated, the gather and the sum are local and
    the row's [L, T] is the only thing moved (a slice of one data shard)."""
    vis = whole(aux["key_vision"][watch])  # [T]
    rows = whole(jnp.stack([p[watch].astype(jnp.float32).mean(axis=0) for p in aux["attn_rows"]]))  # [L, T]
    cells = whole(cells)
    n = cells.shape[0]
    idx = jnp.nonzero(vis, size=n, fill_value=0)[0]
    seg = jnp.where(jnp.arange(n) < vis.sum(), jnp.clip(cells, 0, slots), slots)
    pooled = ops.segment_sum(rows[:, idx].T, seg, num_segments=slots + 1)[:slots].T  # [L, slots]
    return pooled.astype(jnp.float16), jnp.sum(jnp.where(vis[None, :], rows, 0.0), axis=-1)


def decode_payload(tap: TapConfig, aux: dict, logits_bv, temperature, token_b, logprob_b, entropy_b, alive_b, step,
                   cache_len, image=None, whole: Callable = same):
    """The reduced arrays one emitted decode step sends to the host (built inside the cond).

    logits_bv: [B, V] raw logits and temperature the scalar the token was drawn with;
    logprob_b the sampled token's log-probability under softmax(logits / temperature);
    alive_b: bool [B] rows that had not finished before this step. image: None, or the image
    view's (slots, cells) (`image_attention`, which also takes `whole`). Only the first
    `tap.max_rows` rows travel. The top-k probabilities reuse the sampled token's logprob
    for the normaliser (log Z = z[token] - logprob), so an emit makes one pass over the
    vocabulary (the block maxima of top_k_exact), not three.
    """
    r = _rows(tap, token_b.shape[0])
    x = logits_bv[:r].astype(jnp.float32)
    top_x, top_ids = top_k_exact(x, tap.top_k)  # temperature > 0 keeps the order: scale only k values
    top_z = top_x / temperature
    tok, lp = token_b[:r].astype(jnp.int32), logprob_b[:r].astype(jnp.float32)
    log_z = jnp.take_along_axis(x, jnp.clip(tok, 0, x.shape[-1] - 1)[:, None], axis=-1)[:, 0] / temperature - lp
    top_lp = top_z - jnp.where(alive_b[:r], log_z, jnp.max(top_z, axis=-1))[:, None]  # finished rows: unused
    out = dict(step=jnp.asarray(step, jnp.int32), cache_len=jnp.asarray(cache_len, jnp.int32),
               token=tok, logprob=lp, entropy=entropy_b[:r].astype(jnp.float32), alive=alive_b[:r],
               top_ids=top_ids.astype(jnp.int32), top_p=jnp.exp(jnp.minimum(top_lp, 0.0)).astype(jnp.float32))
    stats, row = attention_for_emit(tap, aux, r, min(tap.watch_row, token_b.shape[0] - 1))
    if stats is not None:
        out["stats"] = stats  # [L, R, H, 4]
    if row is not None:
        out["attn_row"] = row.astype(jnp.float16)  # [T]
    if tap.image_attention and image is not None and image[0] > 0 and aux.get("attn_rows") is not None:
        out["img_attn"], out["img_share"] = image_attention(aux, min(tap.watch_row, token_b.shape[0] - 1),
                                                             *image, whole=whole)
    return out


_INT_FIELDS = ("token", "alive", "top_ids")
_FLOAT_FIELDS = ("logprob", "entropy", "top_p", "stats")
_HEADER = 10  # step, cache_len, R, k, L, H, row length, has_stats, image layers, image slots


def pack_payload(p: dict):
    """One float32 buffer for the whole payload: each array handed to a host callback costs
    Python-side overhead, so a step sends one. Integers travel bit-cast, the float16
    attention row two per word; an 8-word header makes the buffer self-describing."""
    r, k = p["top_ids"].shape
    L, H = (p["stats"].shape[0], p["stats"].shape[2]) if "stats" in p else (0, 0)
    row = p.get("attn_row")
    n_row = 0 if row is None else row.shape[0]
    img_l, img_n = p["img_attn"].shape if "img_attn" in p else (0, 0)
    head = jnp.stack([p["step"], p["cache_len"], jnp.int32(r), jnp.int32(k), jnp.int32(L), jnp.int32(H),
                      jnp.int32(n_row), jnp.int32("stats" in p), jnp.int32(img_l), jnp.int32(img_n)]).astype(jnp.int32)
    ints = [head] + [p[f].astype(jnp.int32).reshape(-1) for f in _INT_FIELDS]
    parts = [lax.bitcast_convert_type(jnp.concatenate(ints), jnp.float32)]
    parts += [p[f].astype(jnp.float32).reshape(-1) for f in _FLOAT_FIELDS if f in p]
    if img_l:  # the image view's share [L] (float32), then its [L, N] float16 two per word
        parts.append(p["img_share"].astype(jnp.float32))
        parts.append(_halves(p["img_attn"].reshape(-1)))
    if row is not None:
        parts.append(_halves(row))
    return jnp.concatenate(parts)


def _halves(x):
    """A float16 vector as float32 words, two values a word (padded to even length)."""
    x16 = jnp.pad(x.astype(jnp.float16), (0, x.shape[0] % 2)).reshape(-1, 2)
    return lax.bitcast_convert_type(x16, jnp.float32)


def unpack_payload(buf: np.ndarray) -> dict:
    """Host inverse of `pack_payload` (numpy only); the arrays are copies, safe to keep."""
    buf = np.array(buf, dtype=np.float32, copy=True)  # CPU callback buffers are borrowed
    ints = buf.view(np.int32)
    step, cache_len, r, k, L, H, n_row, has_stats, img_l, img_n = (int(x) for x in ints[:_HEADER])
    sizes = dict(token=r, alive=r, top_ids=r * k, logprob=r, entropy=r, top_p=r * k, stats=L * r * H * 4)
    shapes = dict(top_ids=(r, k), top_p=(r, k), stats=(L, r, H, 4))
    out, at = dict(step=np.int32(step), cache_len=np.int32(cache_len)), _HEADER
    for f in _INT_FIELDS + _FLOAT_FIELDS:
        if f == "stats" and not has_stats:
            continue
        src = ints if f in _INT_FIELDS else buf
        out[f] = src[at:at + sizes[f]].reshape(shapes.get(f, (-1,)))
        at += sizes[f]
    out["alive"] = out["alive"].astype(bool)
    if img_l:
        out["img_share"] = buf[at:at + img_l]
        at += img_l
        words = (img_l * img_n + 1) // 2
        out["img_attn"] = buf[at:at + words].view(np.float16)[:img_l * img_n].reshape(img_l, img_n)
        at += words
    if n_row:
        out["attn_row"] = buf[at:].view(np.float16)[:n_row]
    return out


def pool_factor(n: int, max_side: int) -> int:
    """The integer pooling factor that brings a side of n cells to at most max_side."""
    return max(1, math.ceil(n / max_side))


def pool_layout(n: int, max_side: int):
    """(factor f, leading pad) of the one pooling the device and the host labels share:
    n cells are padded at the START to a multiple of f (with left-padded prompts the real
    tokens sit at the end) and cut into bins of f, so pooled cell i covers original cells
    [i*f - pad, (i+1)*f - pad)."""
    f = pool_factor(n, max_side)
    return f, (-n) % f


def pool_matrix(m_qk, max_side: int, valid_q=None):
    """Pool a [S, S] attention matrix (a prompt over itself) to at most max_side per side: a
    cell is the attention the bin's real queries give the bin's keys, summed over keys and
    averaged over those queries, so pooled rows still sum to 1. valid_q (bool [S]) marks the
    real (non-pad) queries; pad rows are dropped. numpy or jax arrays. Returns (pooled, f)."""
    xp = np if isinstance(m_qk, np.ndarray) else jnp
    S = m_qk.shape[0]
    valid = xp.ones(S, bool) if valid_q is None else valid_q.astype(bool)
    m = xp.where(valid[:, None], m_qk, 0)
    f, pad = pool_layout(S, max_side)
    if f == 1:
        return m, 1
    m = xp.pad(m, ((pad, 0), (pad, 0)))
    n = m.shape[0] // f
    count = xp.pad(valid, (pad, 0)).reshape(n, f).sum(axis=1)
    summed = m.reshape(n, f, n, f).sum(axis=(1, 3))
    return summed / xp.maximum(count, 1)[:, None].astype(summed.dtype), f


def matrix_of(tap: TapConfig, probs, watch: int):
    """The [S, S] matrix the tap asks for from the model's raw per-layer probs [B, H, S, S]:
    one layer or the mean over layers (-1), one head or the mean over heads (None)."""
    layers = probs if tap.matrix_layer == -1 else (probs[tap.matrix_layer],)
    m = jnp.mean(jnp.stack([p[watch].astype(jnp.float32) for p in layers]), axis=0)  # [H, S, S]
    return m.mean(axis=0) if tap.matrix_head is None else m[tap.matrix_head]


def prefill_payload(tap: TapConfig, aux: dict, logits_bv, temperature, token_b, logprob_b, entropy_b, cache_len,
                    image=None, whole: Callable = same):
    """Payload of the prefill emit: the decode fields for token 0, plus the pooled matrix."""
    alive = jnp.ones(token_b.shape, bool)
    out = {"packed": pack_payload(decode_payload(tap, aux, logits_bv, temperature, token_b, logprob_b, entropy_b,
                                                 alive, 0, cache_len, image, whole))}
    if tap.matrix_layer is not None and "attn_probs" in aux:
        w = min(tap.watch_row, token_b.shape[0] - 1)
        m = matrix_of(tap, aux["attn_probs"], w)
        pooled, _ = pool_matrix(m, tap.matrix_max, aux["key_valid"][w, :m.shape[0]])
        out["matrix"] = pooled.astype(jnp.float16)
    return out


def gated_emit(callback: Callable, step, stride, make_payload: Callable[[], dict],
               gather: Optional[Callable] = None) -> None:
    """Emit when step % stride == 0; `step` must be unbatched (a batched predicate under vmap
    runs both branches, i.e. emits every step). The payload is built only in the taken branch
    and travels packed into one buffer. `gather` (a sharded program's): applied to that
    buffer before the callback, e.g. a constraint that replicates it, so the only collective
    an emit adds moves the packed bytes and nothing larger."""
    def fire():
        packed = pack_payload(make_payload())
        tap_callback.emit(callback, packed if gather is None else gather(packed))

    lax.cond(step % jnp.maximum(stride, 1) == 0, fire, lambda: None)


# ---- the update taps (once per PPO update; the rows are built in vlmrl.core.update_stats) ----

UPDATE_HEADER = 3  # optimizer steps taken before the update, steps in it, rows; then 3 figures


def pack_update(count, steps: int, figures, squares):
    """One float32 buffer per update: int32 header (bit-cast), the global figures (mean grad
    norm, max grad norm, mean clip factor), then the squared sums [3, rows]: gradient and
    change (means over the steps), weights (before the update)."""
    rows = squares.shape[-1]
    head = jnp.stack([jnp.asarray(count, jnp.int32), jnp.int32(steps), jnp.int32(rows)])
    return jnp.concatenate([lax.bitcast_convert_type(head, jnp.float32), figures.astype(jnp.float32),
                            squares.astype(jnp.float32).reshape(-1)])
