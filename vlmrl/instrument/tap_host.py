"""Host side of the taps: payloads from XLA's callback threads become events on a `Bus`.

`TapHost` (decoding) and `UpdateTapHost` (one PPO update) never raise into the jitted
step, never block and never call JAX: numpy copies and non-blocking publishes only.
`TapHost` adapts the emit stride between generate calls so that emits stay near a
target rate. The device side is `taps.py`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from typing import Callable, Optional

import numpy as np

from vlmrl.errors import UsageError
from vlmrl.instrument.events import (ATTN_STATS, UPDATE_OTHER_ROWS, UPDATE_SEGMENTS, AttentionMatrix, DecodeState,
                                     UpdateStats)
from vlmrl.instrument.image_tap import attention_event, image_events
from vlmrl.instrument.taps import UPDATE_HEADER, TapConfig, pool_layout, unpack_payload


@dataclasses.dataclass
class CallContext:
    """What the host knows about the running generate call (never sent through the device)."""

    batch: int = 1
    cache_max: int = 0
    rope_deltas: Optional[np.ndarray] = None  # int [B]
    last_positions: Optional[np.ndarray] = None  # int [B, 3]: (t,h,w) of each prompt's last token
    vision_spans: Optional[list] = None  # per row (start, end) or None
    vision_grids: Optional[list] = None  # per row (t, h, w) or None
    prompt_ids: Optional[np.ndarray] = None  # [B, S] as fed (left padded)
    prompt_mask: Optional[np.ndarray] = None
    kv_bytes_per_slot: int = 0  # K+V bytes of one cache slot, all layers, whole batch
    image_token_id: int = -1
    stride: int = 1
    generation: int = 0  # set by TapHost.begin_call: which generate() call this is
    # The image view: the watched row's image tokens (all its images) and its images as
    # (merged grid (t, h, w), uint8 [H, W, 3] as the model saw it) pairs, in token order.
    image_tokens: int = 0
    images: Optional[list] = None
    image_pool: int = 1  # f: the attention arrives summed over f x f merged patches (core.image_context)
    image_cells: Optional[int] = None  # ... in this many cells (None: one a token)


class TapHost:
    """Receives tap payloads on XLA's callback threads and publishes events.

    Args:
      tap: the TapConfig the device side was traced with (watched row, matrix layer/head).
      bus: where events go (`vlmrl.instrument.bus.Bus`); None means the process default bus.
      detok: host callable token_id -> str for token texts (never called inside jit).
      target_rate: emits per second the stride adaptation aims for.
      special_ids: ids shown as "special" in matrix token types.
    """

    def __init__(self, tap: TapConfig, bus=None, detok: Optional[Callable[[int], str]] = None,
                 target_rate: float = 30.0, initial_stride: int = 8, special_ids=(), log=None):
        if bus is None:
            from vlmrl.instrument.bus import default_bus
            bus = default_bus()
        if not target_rate > 0:
            raise UsageError(f"target_rate must be > 0 emits per second, got {target_rate}")
        self.tap = tap
        self.bus = bus
        self.detok = detok
        self.target_rate = float(target_rate)
        self.stride = max(1, int(initial_stride))
        self.special_ids = frozenset(int(s) for s in special_ids)
        self.ctx = CallContext()
        self.callbacks = 0  # every callback that arrived (prefill + decode)
        self.decode_callbacks = 0
        self.errors = 0
        self.detok_errors = 0  # token ids the detokenizer refused: shown as <id>, counted here
        self.last_bytes = 0  # bytes the last decode callback carried from the device
        self.generation = 0  # generate() calls begun; events carry it (step keys restart per call)
        self._log = log or (lambda msg: print(msg, file=sys.stderr))
        self._times: list = []
        self._lock = threading.Lock()

    # ---- call bracketing (sampler thread) ----
    def begin_call(self, ctx: CallContext) -> None:
        ctx.stride = self.stride
        self.generation += 1
        ctx.generation = self.generation
        self.ctx = ctx
        with self._lock:
            self._times = []
        if ctx.images and self.tap.image_attention:
            try:  # on the sampler's thread, before the call: a bad image must not stop sampling
                for ev in image_events(ctx.generation, min(self.tap.watch_row, ctx.batch - 1), ctx.images):
                    self.bus.publish(ev)
            except Exception as exc:
                self._report(exc)

    def end_call(self, decode_steps: int, wall_s: float) -> int:
        """Adapt the stride from this call's emit timing; returns the stride for the next call."""
        with self._lock:
            times = list(self._times)
        used = self.ctx.stride
        if len(times) >= 3 and times[-1] > times[0]:
            # steps/s measured between emits excludes compile and prefill time
            steps_per_s = (len(times) - 1) * used / (times[-1] - times[0])
        elif wall_s > 0 and decode_steps > 0:
            steps_per_s = decode_steps / wall_s
        else:
            return self.stride
        want = max(1, int(round(steps_per_s / self.target_rate)))
        # move at most 4x per call so one noisy call cannot swing the rate wildly
        self.stride = int(min(max(want, used // 4, 1), used * 4))
        return self.stride

    # ---- callbacks (XLA threads): numpy copies + non-blocking publish only ----
    def on_decode(self, payload) -> None:
        try:
            self.callbacks += 1
            self.decode_callbacks += 1
            with self._lock:
                self._times.append(time.perf_counter())
            self.last_bytes = int(np.asarray(payload).nbytes)
            self._publish_rows(unpack_payload(payload), phase="decode")
        except Exception as exc:  # a raising callback would fail the jitted step
            self._report(exc)

    def on_prefill(self, payload) -> None:
        try:
            self.callbacks += 1
            p = unpack_payload(payload["packed"])
            self._publish_rows(p, phase="prefill")
            if "matrix" in payload:
                m = np.array(payload["matrix"], copy=True)  # CPU buffers are borrowed
                self.bus.publish(self._matrix_event(m, p))
        except Exception as exc:
            self._report(exc)

    def _report(self, exc: BaseException) -> None:
        self.errors += 1
        if self.errors == 1:
            self._log(f"vlmrl taps: event callback failed, further errors counted silently: {exc!r}")

    def _text(self, token_id: int) -> str:
        if self.detok is None:
            return f"<{token_id}>"
        try:
            return str(self.detok(int(token_id)))
        except Exception:  # a tokenizer's own error types: the id stands in, the event still goes out
            self.detok_errors += 1
            return f"<{token_id}>"

    def _publish_rows(self, p: dict, phase: str) -> None:
        ctx = self.ctx
        step, cache_len = int(p["step"]), int(p["cache_len"])
        stats = p.get("stats")  # [L, R, H, 4]
        # Python scalars in one go per field: per-element numpy indexing costs more than the rest
        toks, alive, lps, ents = (p[f].tolist() for f in ("token", "alive", "logprob", "entropy"))
        top_ids, top_p = p["top_ids"].tolist(), p["top_p"].tolist()
        watch = min(self.tap.watch_row, len(toks) - 1)
        kv_bytes = int(ctx.kv_bytes_per_slot * cache_len) if ctx.kv_bytes_per_slot else None
        for r, tok in enumerate(toks):
            if not alive[r]:
                continue
            ev = DecodeState(step=step, token_id=tok, token_text=self._text(tok), token_prob=math.exp(lps[r]),
                             cache_len=cache_len, cache_max=ctx.cache_max, seq_index=r, generation=ctx.generation,
                             batch_size=ctx.batch, logprob=lps[r], entropy=ents[r], phase=phase, kv_bytes=kv_bytes)
            ev.top_k = [(i, self._text(i), q) for i, q in zip(top_ids[r], top_p[r])]
            if phase == "prefill" and ctx.last_positions is not None:
                ev.mrope_t, ev.mrope_h, ev.mrope_w = (int(x) for x in ctx.last_positions[r])
            elif ctx.rope_deltas is not None:
                # the query of this step sat in slot cache_len-1; decode positions share one value
                pos = cache_len - 1 + int(ctx.rope_deltas[r])
                ev.mrope_t = ev.mrope_h = ev.mrope_w = pos
            if stats is not None:
                s = stats[:, r]  # [L, H, 4]
                ev.attn_stats = {name: s[..., j] for j, name in enumerate(ATTN_STATS)}
                ev.attention_pattern = s[..., 0]
                ev.active_layer, ev.active_head = divmod(int(np.argmax(s[..., 0])), s.shape[1])
            if ctx.vision_spans is not None and r < len(ctx.vision_spans):
                ev.vision_span, ev.vision_grid = ctx.vision_spans[r], ctx.vision_grids[r]
            if r == watch and "attn_row" in p:
                ev.attention_row = p["attn_row"][:cache_len].astype(np.float32)
            self.bus.publish(ev)
            if r == watch and "img_attn" in p:
                img = attention_event(p, generation=ctx.generation, row=r, tokens=ctx.image_tokens, token_id=tok,
                                      token_text=ev.token_text, phase=phase, pool=ctx.image_pool,
                                      cells=ctx.image_cells)
                if img is not None:
                    self.bus.publish(img)

    def _matrix_event(self, m: np.ndarray, p: dict) -> AttentionMatrix:
        ctx = self.ctx
        w = min(self.tap.watch_row, ctx.batch - 1)
        ids = ctx.prompt_ids[w] if ctx.prompt_ids is not None else np.zeros(m.shape[0], np.int64)
        mask = ctx.prompt_mask[w] if ctx.prompt_mask is not None else np.ones(len(ids), bool)
        S = len(ids)
        f, pad = pool_layout(S, self.tap.matrix_max)  # the device pooled with this same layout
        ids_p = np.concatenate([np.full(pad, -1), ids])
        mask_p = np.concatenate([np.zeros(pad, bool), mask.astype(bool)])
        keep = mask_p.reshape(-1, f).any(axis=1)  # drop cells made only of left padding
        groups = ids_p.reshape(-1, f)[keep]
        texts = [self._text(next(int(t) for t, v in zip(g, mk) if v)) for g, mk in
                 zip(groups, mask_p.reshape(-1, f)[keep])]
        types = []
        for g in groups:
            if (g == ctx.image_token_id).any():
                types.append("vision")
            elif any(int(t) in self.special_ids for t in g if t >= 0):
                types.append("special")
            else:
                types.append("text")
        mat = m[np.ix_(keep, keep)]
        layer = self.tap.matrix_layer
        return AttentionMatrix(layer=None if layer == -1 else layer, head=self.tap.matrix_head,
                               query_tokens=texts, key_tokens=list(texts), token_types=types, matrix=mat,
                               pool=f, step=int(p["step"]))


def unpack_update(buf: np.ndarray, sizes: dict) -> dict:
    """Host inverse of `taps.pack_update`: {"count", "steps", "figures" [3], segment: [3, n] squared sums (g, Δw, w)}.

    `sizes` gives the rows per segment (UPDATE_SEGMENTS order); a buffer whose header or
    length does not match them raises ValueError."""
    buf = np.array(buf, dtype=np.float32, copy=True)  # CPU callback buffers are borrowed
    count, steps, rows = (int(x) for x in buf[:UPDATE_HEADER].view(np.int32))
    want = sum(sizes[name] for name in UPDATE_SEGMENTS)
    if rows != want or buf.size != UPDATE_HEADER + 3 + 3 * rows or steps < 1:
        raise ValueError(f"update payload of {buf.size} words for {rows} rows and {steps} steps; expected {want} rows")
    squares = buf[UPDATE_HEADER + 3:].reshape(3, rows)
    out, at = {"count": count, "steps": steps, "figures": buf[UPDATE_HEADER:UPDATE_HEADER + 3]}, 0
    for name in UPDATE_SEGMENTS:
        out[name] = squares[:, at:at + sizes[name]]
        at += sizes[name]
    return out


def _norm_ratio(sq: np.ndarray):
    """(||g||, ||Δw|| / ||w||) per row from the squared sums [3, n]; ratio NaN where ||w|| = 0."""
    g, d, w = np.sqrt(np.maximum(sq, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(w > 0, d / w, np.nan).astype(np.float32)
    return g.astype(np.float32), ratio


class UpdateTapHost:
    """Receives the one update-taps payload per PPO update and publishes an UpdateStats.

    Args:
      bus: where the event goes.
      num_layers, num_heads, vision_depth, mergers: the row layout the device packs.
      log: where the first callback failure is reported (stderr by default).
    """

    def __init__(self, bus, num_layers: int, num_heads: int, vision_depth: int, mergers: int, log=None):
        self.bus, self.num_heads = bus, num_heads
        self.sizes = {"heads": num_layers * num_heads, "mlp": num_layers, "layer": num_layers,
                      "vision": vision_depth, "merger": mergers, "other": len(UPDATE_OTHER_ROWS)}
        self.callbacks = 0
        self.errors = 0
        self.last_bytes = 0  # bytes the last update callback carried from the device
        self._log = log or (lambda msg: print(msg, file=sys.stderr))

    def on_update(self, payload) -> None:
        try:
            self.callbacks += 1
            self.last_bytes = int(np.asarray(payload).nbytes)
            self.bus.publish(self.event(unpack_update(payload, self.sizes)))
        except Exception as exc:  # a raising callback would fail the jitted update
            self.errors += 1
            if self.errors == 1:
                self._log(f"vlmrl update taps: callback failed, further errors counted silently: {exc!r}")

    def event(self, p: dict) -> UpdateStats:
        fields = {}
        for name in UPDATE_SEGMENTS:
            g, r = _norm_ratio(p[name])
            if name == "heads":
                g, r = g.reshape(-1, self.num_heads), r.reshape(-1, self.num_heads)
            field = "head" if name == "heads" else name  # UpdateStats.head_grad, .mlp_grad, ...
            fields[f"{field}_grad"], fields[f"{field}_ratio"] = g, r
        gn, gmax, clip = (float(x) for x in p["figures"])
        return UpdateStats(step=p["count"] // p["steps"], optimizer_steps=p["steps"], grad_norm=gn,
                           grad_norm_max=gmax, clip_factor=clip, **fields)
