"""Batched Qwen3-VL generation: jitted prefill + one `lax.while_loop` decode over a KV cache.

Host side (numpy): left padding into length buckets, mRoPE positions and vision inputs.
Device side (one jit per bucket shape): prefill, then decode until every row has hit a stop
id or `max_new_tokens` (a traced bound, so a new length inside the bucket does not
recompile). Taps (`vlmrl.instrument.taps`) add one host callback per emitted step when on;
when off the traced program is exactly the plain sampler.

Start here for RL rollouts: `Sampler(model).generate(prompts=[ids...], max_new_tokens=64, key=k)`.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from vlmrl.core import mesh as meshlib
from vlmrl.core.distributed import to_host
from vlmrl.core.image_context import pool_cells, watched_images
from vlmrl.errors import UsageError
from vlmrl.instrument import taps as taps_lib
from vlmrl.instrument.tap_host import CallContext, TapHost
from vlmrl.instrument.taps import TapConfig


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Host-side sampler settings."""

    stop_ids: tuple = (151645, 151643)  # <|im_end|>, <|endoftext|>
    pad_id: int = 151643  # fills finished rows and left padding
    prompt_buckets: tuple = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
    new_token_buckets: tuple = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    patch_buckets: tuple = (64, 256, 1024, 4096, 16384, 65536)  # vision patches per batch
    cache_dtype: Optional[str] = None  # None: the model's parameter dtype
    emit_rate: float = 30.0  # target tap emits per second
    initial_stride: int = 8
    special_ids: tuple = ()  # shown as "special" in the matrix view's token types (with stops, vision marks)
    # The processor values the pixel rows were made with (None: Qwen3-VL's): the image view
    # shows the image the model saw, rebuilt from them (core.image_context).
    image_config: Optional[object] = None


@dataclasses.dataclass
class SampleOutput:
    """Generated continuations, numpy, one row per prompt.

    tokens int32 [B, N] (pad_id after a row stops; the stop token itself is kept), logprobs and
    entropy float32 [B, N] of the temperature-scaled distribution before top-k/top-p truncation
    (0 where masked), mask bool [B, N] (True on generated tokens), lengths int32 [B],
    finished bool [B] (stopped on a stop id), prompt_ids/prompt_mask [B, S] as fed (left padded).
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    entropy: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray
    prompt_ids: np.ndarray
    prompt_mask: np.ndarray


def _bucket(n: int, buckets: Sequence[int], what: str) -> int:
    for b in buckets:
        if n <= b:
            return int(b)
    raise ValueError(f"{what} {n} exceeds the largest bucket {buckets[-1]}")


def _replace(obj, **kw):
    if hasattr(obj, "replace"):
        return obj.replace(**kw)
    if hasattr(obj, "_replace"):
        return obj._replace(**kw)
    return dataclasses.replace(obj, **kw)


def sample_logits(logits_bv, key, temperature, top_p, *, greedy: bool, top_k: int, use_top_p: bool):
    """Draw one token per row; returns (token [B], logprob [B], entropy [B], logp [B, V]).

    logprob/entropy are of softmax(logits / T) (T = 1 when greedy), before truncation: the
    distribution a PPO update recomputes. top_k (static, 0 = off) and top_p (traced, with the
    static switch use_top_p) only restrict which tokens can be drawn.
    """
    x = logits_bv.astype(jnp.float32)
    t = jnp.float32(1.0) if greedy else jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-6)
    logp = jax.nn.log_softmax(x / t, axis=-1)
    if greedy:
        tok = jnp.argmax(x, axis=-1)
    else:
        z = x / t
        if top_k > 0:
            vals, idx = lax.top_k(z, min(top_k, z.shape[-1]))
            if use_top_p:
                vals = _nucleus(vals, top_p)
            tok = jnp.take_along_axis(idx, jax.random.categorical(key, vals, axis=-1)[:, None], axis=-1)[:, 0]
        else:
            if use_top_p:
                srt = jnp.sort(z, axis=-1)[:, ::-1]
                kept = _nucleus(srt, top_p)
                thresh = jnp.min(jnp.where(jnp.isfinite(kept), kept, jnp.inf), axis=-1, keepdims=True)
                z = jnp.where(z >= thresh, z, -jnp.inf)
            tok = jax.random.categorical(key, z, axis=-1)
    tok = tok.astype(jnp.int32)
    lp = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return tok, lp, ent, logp


def _nucleus(sorted_desc, top_p):
    """Keep the smallest prefix of descending logits whose probability mass reaches top_p."""
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each entry
    return jnp.where(before < top_p, sorted_desc, -jnp.inf)  # the first entry is always kept


class Sampler:
    """Generate from a Qwen3-VL `nnx.Module` with the model API below.

    Args:
      model: has `.config` (Qwen3VLConfig), `.forward(...)`, `.decode_step(...)`.
      config: SamplingConfig (None: defaults).
      tap: TapConfig; None or disabled traces the uninstrumented program.
      bus, detok: where tap events go and how token ids become text (host side).
      cache_init, rope_index, vision_prep: overrides of KVCache.init,
        positions.get_rope_index and vision.prepare_vision_inputs (tests use a fake model).
      mesh: a `jax.sharding.Mesh` (axes of vlmrl.core.mesh) to run on: prompt rows and the
        KV cache split over its data axis (kv heads over tensor); weights as the caller
        placed them (`update_params`). None: one device, the plain program.
    """

    def __init__(self, model, config: Optional[SamplingConfig] = None, tap: Optional[TapConfig] = None, bus=None,
                 detok: Optional[Callable[[int], str]] = None, *, cache_init=None, rope_index=None, vision_prep=None,
                 mesh=None):
        self.config = config or SamplingConfig()
        self.mesh = mesh
        self.model_config = model.config
        self.tap = tap if taps_lib.is_on(tap) else None
        self.graphdef, self.state = nnx.split(model)
        if cache_init is None or rope_index is None or vision_prep is None:
            from vlmrl.models.qwen3vl import KVCache, positions, vision
            cache_init = cache_init or KVCache.init
            rope_index = rope_index or positions.get_rope_index
            vision_prep = vision_prep or vision.prepare_vision_inputs
        self._cache_init, self._rope_index, self._vision_prep = cache_init, rope_index, vision_prep
        self.host = None
        if self.tap is not None:
            mc = self.model_config
            special = (set(self.config.stop_ids) | set(self.config.special_ids)
                       | {mc.vision_start_token_id, mc.vision_end_token_id})
            self.host = TapHost(self.tap, bus=bus, detok=detok, target_rate=self.config.emit_rate,
                                initial_stride=self.config.initial_stride, special_ids=special)
        floats = [x.dtype for x in jax.tree_util.tree_leaves(self.state) if jnp.issubdtype(x.dtype, jnp.floating)]
        model_dtype = getattr(model, "dtype", None) or (floats[0] if floats else jnp.float32)
        self.cache_dtype = jnp.dtype(self.config.cache_dtype or model_dtype)
        self._jit = jax.jit(self._generate, static_argnames=("n_bucket", "greedy", "top_k", "use_top_p"))
        self._kv_bytes: dict = {}  # (batch, slots) -> K+V bytes, see kv_cache_bytes

    def kv_cache_bytes(self, batch: int, slots: int) -> int:
        """Bytes of the K and V arrays a generate call of `batch` rows and `slots` cache slots
        allocates, read from the arrays' own shapes and dtypes (traced, nothing allocated)."""
        key = (int(batch), int(slots))
        if key not in self._kv_bytes:
            spec = self.kv_cache_spec(*key)
            self._kv_bytes[key] = sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize for a in (spec.k, spec.v))
        return self._kv_bytes[key]

    def kv_cache_spec(self, batch: int, slots: int):
        """The cache a generate call allocates, as shapes and dtypes (jax.eval_shape: no memory)."""
        return jax.eval_shape(lambda: self._cache_init(self.model_config, int(batch), int(slots), self.cache_dtype))

    def update_params(self, model_or_state) -> None:
        """Take new weights (after a PPO update) without recompiling: same graph, new state."""
        self.state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state

    # ---- host side ----------------------------------------------------------------------
    def prepare(self, prompts=None, input_ids=None, attention_mask=None, image_grid_thw=None):
        """Left-pad prompts into a length bucket; returns (ids [B,S], mask [B,S]) int32."""
        if prompts is None:
            if input_ids is None:
                raise UsageError("generate needs prompts (list of 1-D id arrays) or input_ids [B, S]")
            ids = np.asarray(input_ids)
            if ids.ndim != 2:
                raise UsageError(f"input_ids must be [batch, seq], got shape {ids.shape}")
            mask = np.ones_like(ids, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
            if mask.shape != ids.shape:
                raise UsageError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
            prompts = [row[m] for row, m in zip(ids, mask)]  # re-pad on the left whatever came in
        rows = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
        if not rows or min(len(r) for r in rows) == 0:
            raise ValueError("every prompt needs at least one token")
        S = _bucket(max(len(r) for r in rows), self.config.prompt_buckets, "prompt length")
        ids = np.full((len(rows), S), self.config.pad_id, np.int32)
        mask = np.zeros((len(rows), S), np.int32)
        for i, r in enumerate(rows):
            ids[i, S - len(r):] = r
            mask[i, S - len(r):] = 1
        return ids, mask

    def generate(self, input_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
                 prompts=None, max_new_tokens: int = 64, key=None, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0) -> SampleOutput:
        """Sample continuations; temperature 0 is greedy. Deterministic for a fixed key."""
        args, statics, ctx = self._call_args(input_ids, attention_mask, pixel_values, image_grid_thw, prompts,
                                             max_new_tokens, key, temperature, top_k, top_p)
        if self.host is not None:
            self.host.begin_call(ctx)
            args[-1] = jnp.int32(self.host.stride)
        t0 = time.perf_counter()
        out = self._jit(*args, **statics)
        # (gathered from every process when the rows are sharded across several)
        tokens, logprobs, entropy, lengths, finished = (to_host(x) for x in out)
        if self.host is not None:
            self.host.end_call(int(lengths.max()), time.perf_counter() - t0)
        N = max_new_tokens
        m = np.arange(N)[None, :] < lengths[:, None]
        return SampleOutput(tokens=tokens[:, :N], logprobs=np.where(m, logprobs[:, :N], 0.0),
                            entropy=np.where(m, entropy[:, :N], 0.0), mask=m, lengths=lengths, finished=finished,
                            prompt_ids=ctx.prompt_ids, prompt_mask=ctx.prompt_mask)

    def jaxpr(self, **generate_kw):
        """The jaxpr `generate(**generate_kw)` would run (prefill and decode loop), for inspection."""
        kw = dict(input_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None, prompts=None,
                  max_new_tokens=64, key=None, temperature=0.0, top_k=0, top_p=1.0)
        kw.update(generate_kw)
        args, statics, _ = self._call_args(**kw)
        return jax.make_jaxpr(functools.partial(self._generate, **statics))(*args)

    def lowered(self, **generate_kw):
        """The lowered program `generate(**generate_kw)` would run; `.compile().memory_analysis()`
        gives XLA's own buffer sizes for it (the memory planner's tests read them)."""
        kw = dict(input_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None, prompts=None,
                  max_new_tokens=64, key=None, temperature=0.0, top_k=0, top_p=1.0)
        kw.update(generate_kw)
        args, statics, _ = self._call_args(**kw)
        return self._jit.lower(*args, **statics)

    def _call_args(self, input_ids, attention_mask, pixel_values, image_grid_thw, prompts, max_new_tokens, key,
                   temperature, top_k, top_p):
        if max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not 0.0 < top_p <= 1.0:
            raise UsageError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0 or temperature < 0:
            raise UsageError(f"top_k and temperature must be >= 0, got {top_k}, {temperature}")
        mc = self.model_config
        ids, mask = self.prepare(prompts, input_ids, attention_mask)
        B, S = ids.shape
        n_bucket = _bucket(max_new_tokens, self.config.new_token_buckets, "max_new_tokens")
        grid = None if image_grid_thw is None else np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
        if (pixel_values is None) != (grid is None):
            raise UsageError("pixel_values and image_grid_thw must be given together")
        merge2 = mc.vision.spatial_merge_size ** 2
        n_img_tok = int((ids == mc.image_token_id).sum())
        if grid is not None and n_img_tok != int(grid.prod(-1).sum()) // merge2:
            raise ValueError(f"prompt has {n_img_tok} image tokens but image_grid_thw {grid.tolist()} needs "
                             f"{int(grid.prod(-1).sum()) // merge2}")
        if grid is None and n_img_tok:
            raise ValueError(f"prompt has {n_img_tok} image tokens but no pixel_values")
        pos, deltas = self._rope_index(ids, grid, mask, mc)
        pos, deltas = np.asarray(pos, np.int32), np.asarray(deltas, np.int32).reshape(B)
        pv = vin = img_cells = None
        ctx = self._context(ids, mask, pos, deltas, grid, S + n_bucket)
        if grid is not None:
            pv = np.asarray(pixel_values, np.float32)
            if pv.ndim != 2 or pv.shape[0] != int(grid.prod(-1).sum()):
                raise ValueError(f"pixel_values shape {pv.shape} does not match image_grid_thw {grid.tolist()} "
                                 f"({int(grid.prod(-1).sum())} patches)")
            # pad the patch count to a bucket: padding patches form their own segment, come last
            n_pad = _bucket(pv.shape[0], self.config.patch_buckets, "vision patches")
            pv = np.concatenate([pv, np.zeros((n_pad - pv.shape[0], pv.shape[1]), np.float32)])
            if self.host is not None:
                ctx.image_tokens, ctx.images = watched_images(ids, grid, pv, mc.image_token_id,
                                                              mc.vision.spatial_merge_size,
                                                              min(self.tap.watch_row, B - 1), self.config.image_config)
                bound = n_pad // mc.vision.spatial_merge_size ** 2  # image tokens the batch can hold
                slots = taps_lib.image_slots(bound, mc.text.num_hidden_layers)
                ctx.image_pool, ctx.image_cells, img_cells = pool_cells([g for g, _ in ctx.images], slots, bound)
                img_cells = jnp.asarray(img_cells)
            vin = self._vision_prep(grid, mc.vision, pad_to=n_pad)
            pv = jnp.asarray(pv, self.cache_dtype)
        key = jax.random.PRNGKey(0) if key is None else key
        args = [self.state, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pos), jnp.asarray(deltas), pv, vin,
                key, jnp.float32(temperature), jnp.float32(top_p), jnp.int32(max_new_tokens), img_cells, jnp.int32(1)]
        if self.mesh is not None:  # rows on the data axis (pixels: patches in row order), the rest replicated
            for i, axis in ((1, 0), (2, 0), (3, 1), (4, 0), (5, 0)):  # ids, mask, pos [3,B,S], deltas, pixels
                if args[i] is not None:
                    args[i] = jax.device_put(args[i], meshlib.rows_sharding(self.mesh, args[i].shape, axis))
        greedy = temperature == 0.0  # top-k / top-p cannot change an argmax: keep them out of the cache key
        statics = dict(n_bucket=n_bucket, greedy=greedy, top_k=0 if greedy else int(top_k),
                       use_top_p=not greedy and top_p < 1.0)
        return args, statics, ctx

    def _context(self, ids, mask, pos, deltas, grid, cache_max) -> CallContext:
        mc = self.model_config
        spans, grids = [], []
        img_i = 0
        for row in ids:  # images are numbered in row-major order of their tokens (as in HF)
            where = np.flatnonzero(row == mc.image_token_id)
            if len(where) == 0 or grid is None:
                spans.append(None)
                grids.append(None)
                continue
            starts = np.flatnonzero(np.diff(np.concatenate([[-2], where])) != 1)
            first_len = (starts[1] if len(starts) > 1 else len(where))
            spans.append((int(where[0]), int(where[first_len - 1]) + 1))
            grids.append(tuple(int(x) for x in grid[min(img_i, len(grid) - 1)]))
            img_i += len(starts)
        slot = self.kv_cache_bytes(len(ids), cache_max) // cache_max
        return CallContext(batch=len(ids), cache_max=cache_max, rope_deltas=deltas,
                           last_positions=pos[:, :, -1].T.copy(), vision_spans=spans, vision_grids=grids,
                           prompt_ids=ids, prompt_mask=mask, kv_bytes_per_slot=slot, image_token_id=mc.image_token_id)

    # ---- device side --------------------------------------------------------------------
    def _generate(self, state, ids, mask, pos, deltas, pv, vin, key, temperature, top_p, max_new, img_cells, stride, *,
                  n_bucket, greedy, top_k, use_top_p):
        tap, host, cfg = self.tap, self.host, self.config
        B, S = ids.shape
        model = nnx.merge(self.graphdef, state)
        cache = self._cache_init(self.model_config, B, S + n_bucket, self.cache_dtype)
        cache = _replace(cache, rope_deltas=deltas)
        cache_sh = None if self.mesh is None else meshlib.cache_shardings(cache, self.mesh)
        cache = meshlib.constrain(cache, cache_sh)
        logits, cache, aux = model.forward(ids, mask, pos, pixel_values=pv, vinputs=vin, cache=cache, tap=tap)
        stop = jnp.asarray(cfg.stop_ids, jnp.int32)

        def pick(logits_bv, i):
            return sample_logits(logits_bv, jax.random.fold_in(key, i), temperature, top_p, greedy=greedy,
                                 top_k=top_k, use_top_p=use_top_p)

        t_used = jnp.float32(1.0) if greedy else jnp.maximum(temperature, 1e-6)  # as in sample_logits
        tok, lp, ent, _ = pick(logits[:, -1], 0)
        # on a mesh an emit's packed payload is replicated (one small all-gather), then handed
        # to the host once, from one device: one event per emitted step for the whole mesh
        gather = None if self.mesh is None else functools.partial(meshlib.constrain,
                                                                   shardings=meshlib.replicated(self.mesh))
        whole = gather or taps_lib.same  # the image taps' gather reads a replicated slice of the watched row
        # static bound on the image tokens the image view's taps gather (0: no image)
        img = None if img_cells is None else (  # the image view's part of an emit (taps.image_attention)
            taps_lib.image_slots(img_cells.shape[0], self.model_config.text.num_hidden_layers), img_cells)
        if tap is not None:
            payload = taps_lib.prefill_payload(tap, aux, logits[:, -1], t_used, tok, lp, ent, cache.length, img,
                                               whole=whole)
            taps_lib.emit(host.on_prefill, payload if gather is None else gather(payload))
        buf_t = jnp.full((B, n_bucket), cfg.pad_id, jnp.int32).at[:, 0].set(tok)
        buf_lp = jnp.zeros((B, n_bucket), jnp.float32).at[:, 0].set(lp)
        buf_e = jnp.zeros((B, n_bucket), jnp.float32).at[:, 0].set(ent)
        done = jnp.isin(tok, stop)
        lengths = jnp.ones((B,), jnp.int32)
        limit = jnp.minimum(max_new, n_bucket)

        def cond(c):
            i, _, done, *_ = c
            return (i < limit) & ~jnp.all(done)

        def body(c):
            i, tok, done, cache, lengths, buf_t, buf_lp, buf_e = c
            m = nnx.merge(self.graphdef, state)
            logits, cache, aux = m.decode_step(tok, cache, tap=tap)
            cache = meshlib.constrain(cache, cache_sh)
            new, lp, ent, _ = pick(logits, i)
            alive = ~done
            new = jnp.where(alive, new, cfg.pad_id)
            if tap is not None:
                length = cache.length
                taps_lib.gated_emit(host.on_decode, i, stride, lambda: taps_lib.decode_payload(
                    tap, aux, logits, t_used, new, lp, ent, alive, i, length, img, whole), gather=gather)
            col = lax.dynamic_update_slice
            buf_t = col(buf_t, new[:, None], (0, i))
            buf_lp = col(buf_lp, jnp.where(alive, lp, 0.0)[:, None], (0, i))
            buf_e = col(buf_e, jnp.where(alive, ent, 0.0)[:, None], (0, i))
            lengths = lengths + alive.astype(jnp.int32)
            done = done | jnp.isin(new, stop)
            return i + 1, new, done, cache, lengths, buf_t, buf_lp, buf_e

        carry = (jnp.int32(1), tok, done, cache, lengths, buf_t, buf_lp, buf_e)
        _, _, done, _, lengths, buf_t, buf_lp, buf_e = lax.while_loop(cond, body, carry)
        finished = jnp.any(jnp.isin(buf_t, stop) & (jnp.arange(n_bucket)[None] < lengths[:, None]), axis=-1)
        return buf_t, buf_lp, buf_e, lengths, finished
