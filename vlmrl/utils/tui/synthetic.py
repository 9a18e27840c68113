"""A model-free source of plausible dashboard events, for the `--synthetic` demo and tests.

It plays what an instrumented Qwen3-VL PPO run emits, in order: RunInfo once; then per
update a prefill (with the AttentionMatrix of the prompt and, optionally, a walk over some
image tokens so their grid mRoPE positions show), one DecodeState per generated token and
batch row, a CreditState and a TrainingState. Numbers follow the real shapes and rules:
attention stats for all of ATTN_STATS in [0, 1], top-k probabilities that sum to at most
1, cache length growing by one per token, mRoPE positions from the image grid (merged
2x2) and text positions continuing after max(h, w) of the image. Deterministic per seed.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from vlmrl.errors import UsageError
from vlmrl.instrument.events import (ATTN_STATS, AttentionMatrix, CreditState, DecodeState, Event, RunInfo,
                                     TrainingState)

_WORDS = (" The", " image", " shows", " a", " red", " square", " in", " the", " top", " left", " corner",
          ".", " There", " are", " three", " blue", " circles", " and", " one", " green", " triangle",
          ",", " so", " the", " answer", " is", " 3", ".", " Looking", " closely", " at", " right",
          " side", " 猫", " edge", "\n", " count", " shapes", " total", " 4")
_SYSTEM = ("<|im_start|>", "system", "\n", "You", " are", " helpful", ".", "<|im_end|>", "\n",
           "<|im_start|>", "user", "\n")
_QUESTION = (" How", " many", " circles", " are", " there", "?", "<|im_end|>", "\n", "<|im_start|>",
             "assistant", "\n")


class SyntheticRun:
    """Deterministic generator of a PPO run's event stream (see module doc)."""

    def __init__(self, num_layers: int = 28, num_heads: int = 16, num_kv_heads: int = 8,
                 head_dim: int = 128, max_cache: int = 2048, batch: int = 2, seed: int = 0,
                 image_grid: Tuple[int, int, int] = (1, 16, 16), gen_tokens: int = 32,
                 deepstack_layers: Tuple[int, ...] = (0, 1, 2), prefill_walk: int = 0,
                 clock: Callable[[], float] = time.time, dtype: str = "bfloat16"):
        if num_layers < 1 or num_heads < 1 or batch < 1 or gen_tokens < 1:
            raise UsageError("num_layers, num_heads, batch and gen_tokens must be >= 1")
        t, h, w = image_grid
        if h % 2 or w % 2:
            raise UsageError(f"image_grid h and w must be even (2x2 merge), got {image_grid}")
        self.L, self.H, self.batch = num_layers, num_heads, batch
        self.gen_tokens = gen_tokens
        self.prefill_walk = prefill_walk
        self.clock = clock
        self.rng = np.random.default_rng(seed)
        self.info = RunInfo(model_name="qwen3vl-synthetic", num_layers=num_layers, num_heads=num_heads,
                            num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, max_cache=max_cache,
                            batch=batch, vision_depth=24, deepstack_layers=tuple(deepstack_layers),
                            device_kind="synthetic", device_memory_in_use=3 << 30,
                            device_memory_limit=16 << 30, wall_time=clock())
        self.grid = (t, h, w)
        gt, gh, gw = t, h // 2, w // 2
        self.n_image = gt * gh * gw
        # prompt: system + <vision_start> image <vision_end> + question
        self.prompt: List[str] = list(_SYSTEM) + ["<|vision_start|>"] + ["<|image_pad|>"] * self.n_image \
            + ["<|vision_end|>"] + list(_QUESTION)
        self.vision_span = (len(_SYSTEM) + 1, len(_SYSTEM) + 1 + self.n_image)
        self.positions = self._mrope_positions(gt, gh, gw)
        self.rope_delta = int(self.positions[:, -1].max()) + 1 - len(self.prompt)
        # per-head character: sharp heads, sink heads, vision heads
        self._sharp = self.rng.uniform(0.1, 0.9, size=(self.L, self.H))
        self._sinky = (self.rng.uniform(size=(self.L, self.H)) < 0.2) * self.rng.uniform(0.4, 0.9, (self.L, self.H))
        depth = np.linspace(0, 1, self.L)[:, None]
        self._vis = np.clip(np.sin(depth * math.pi) * self.rng.uniform(0.3, 1.0, (self.L, self.H)), 0, 1)
        self._wander = np.zeros((self.L, self.H))
        self.update = 0
        self.step = 0

    def _mrope_positions(self, gt: int, gh: int, gw: int) -> np.ndarray:
        """[3, S] (t, h, w) positions of the prompt: text all equal; image on its grid."""
        s0, s1 = self.vision_span
        pos = np.zeros((3, len(self.prompt)), np.int64)
        pos[:, :s0] = np.arange(s0)
        tt, hh, ww = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
        pos[0, s0:s1] = s0 + tt.ravel()
        pos[1, s0:s1] = s0 + hh.ravel()
        pos[2, s0:s1] = s0 + ww.ravel()
        nxt = s0 + max(gt, gh, gw)
        rest = len(self.prompt) - s1
        pos[:, s1:] = nxt + np.arange(rest)
        return pos

    def run_info(self) -> RunInfo:
        return self.info

    def _stats(self, progress: float) -> dict:
        rng, L, H = self.rng, self.L, self.H
        drift = 0.1 * math.sin(self.step / 7.0)
        # per-head wander: AR(1), so consecutive tokens look alike as real heads do
        self._wander = 0.9 * self._wander + rng.normal(0, 0.035, (L, H))
        focus = np.clip(self._sharp + drift + self._wander, 0, 1)
        mx = np.clip(0.05 + 0.9 * focus + 0.3 * self._wander, 0, 1)
        vision = np.clip(self._vis * (1.0 - 0.6 * progress) - 0.5 * self._wander, 0, 1)
        sink = np.clip(self._sinky + 0.3 * self._wander, 0, 1)
        sink = np.minimum(sink, 1.0 - vision)  # shares of one softmax row cannot exceed 1
        return dict(zip(ATTN_STATS, (a.astype(np.float32) for a in (focus, mx, vision, sink))))

    def _top_k(self, k: int = 5) -> List[tuple]:
        logits = self.rng.normal(0, 1.5, k + 20)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-probs)[:k]
        ids = self.rng.choice(len(_WORDS), size=k, replace=False)
        return [(int(1000 + i), _WORDS[i], float(probs[o])) for i, o in zip(ids, order)]

    def _attention_matrix(self) -> AttentionMatrix:
        S = len(self.prompt)
        rng = self.rng
        logits = rng.normal(0, 1, (S, S))
        logits[:, 0] += 3.0  # attention sink on the first token
        logits += -0.15 * np.abs(np.arange(S)[:, None] - np.arange(S)[None, :])  # locality
        s0, s1 = self.vision_span
        logits[s1:, s0:s1] += 1.0  # question tokens look at the image
        logits[np.triu_indices(S, 1)] = -np.inf  # causal
        m = np.exp(logits - logits.max(axis=1, keepdims=True))
        m /= m.sum(axis=1, keepdims=True)
        types = ["special" if t.startswith("<|") else "text" for t in self.prompt]
        for i in range(s0, s1):
            types[i] = "vision"
        return AttentionMatrix(layer=self.L - 1, head=None, query_tokens=list(self.prompt),
                               key_tokens=list(self.prompt), token_types=types,
                               matrix=m.astype(np.float16), step=self.update, wall_time=self.clock())

    def _decode_event(self, row: int, cache_len: int, text: str, tid: int, prob: float, top: list,
                      stats: dict, pos: Tuple[int, int, int], phase: str) -> DecodeState:
        focus = stats["focus"]
        layer = self.step % self.L
        row_attn = self.rng.dirichlet(np.full(cache_len, 0.3)).astype(np.float32)
        return DecodeState(
            step=self.step, token_id=tid, token_text=text, token_prob=float(prob), cache_len=cache_len,
            cache_max=self.info.max_cache, active_layer=layer, active_head=int(np.argmax(focus[layer])),
            mrope_t=int(pos[0]), mrope_h=int(pos[1]), mrope_w=int(pos[2]), attention_pattern=focus,
            seq_index=row, generation=self.update, batch_size=self.batch, logprob=float(math.log(max(prob, 1e-12))),
            entropy=float(-sum(p * math.log(p) for _, _, p in top if p > 0)), top_k=top,
            attn_stats=stats, vision_span=self.vision_span, vision_grid=self.grid,
            kv_bytes=self.info.kv_bytes_per_token(1) * cache_len, attention_row=row_attn, phase=phase,
            wall_time=self.clock())

    def events(self) -> Iterator[Event]:
        """The endless event stream, RunInfo first."""
        yield self.info
        while True:
            yield from self.update_events()

    def update_events(self) -> Iterator[Event]:
        """The events of one PPO update: prefill, decode tokens, credit, training."""
        S = len(self.prompt)
        yield self._attention_matrix()
        s0, s1 = self.vision_span
        walk = list(range(s0, s1, max(1, (s1 - s0) // self.prefill_walk)))[:self.prefill_walk] \
            if self.prefill_walk else []
        for i in walk + [S - 1]:
            stats = self._stats(0.0)
            p = self.positions[:, i]
            text = self.prompt[i]
            yield self._decode_event(0, i + 1, text, 151655 if s0 <= i < s1 else 42, 1.0, [(42, text, 1.0)],
                                     stats, tuple(p), "prefill")
        generated: List[str] = []
        for t in range(self.gen_tokens):
            self.step += 1
            pos = S + t + self.rope_delta
            for row in range(self.batch):
                top = self._top_k()
                pick = 0 if self.rng.uniform() < 0.7 else int(self.rng.integers(len(top)))
                tid, text, prob = top[pick]
                if row == 0:
                    generated.append(text)
                yield self._decode_event(row, S + t + 1, text, tid, prob, top, self._stats(t / self.gen_tokens),
                                         (pos, pos, pos), "decode")
        self.update += 1
        u = self.update
        adv = self.rng.normal(0, 1, len(generated))
        credits = (adv * np.linspace(0.3, 1.0, len(generated))).round(4).tolist()
        yield CreditState(tokens=generated, credits=credits, step=u, wall_time=self.clock())
        reward = 0.2 + 0.6 * (1 - math.exp(-u / 30.0)) + float(self.rng.normal(0, 0.05))
        yield TrainingState(step=u, reward_mean=reward, reward_std=abs(float(self.rng.normal(0.25, 0.03))),
                            kl=0.002 * u ** 0.5 + abs(float(self.rng.normal(0, 0.001))),
                            loss=0.5 * math.exp(-u / 50.0) + float(self.rng.normal(0, 0.02)),
                            tokens_per_sec=float(self.rng.normal(850, 40)), gpu_util=None,
                            policy_entropy=1.8 * math.exp(-u / 80.0) + 0.3, clip_fraction=abs(float(self.rng.normal(0.08, 0.02))),
                            grad_norm=abs(float(self.rng.normal(1.0, 0.2))), learning_rate=1e-6,
                            update_tokens_per_sec=float(self.rng.normal(3000, 100)), wall_time=self.clock())

    def take(self, n: int) -> List[Event]:
        """The first n events of the stream (a fresh generator each call continues the run)."""
        out: List[Event] = []
        if self.update == 0 and self.step == 0:
            out.append(self.info)
        while len(out) < n:
            for ev in self.update_events():
                out.append(ev)
                if len(out) >= n:
                    break
        return out


def drive(publish: Callable[[Event], None], seconds: Optional[float] = None, tokens_per_sec: float = 30.0,
          run: Optional[SyntheticRun] = None, stop: Optional[Callable[[], bool]] = None,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Publish the synthetic stream in real time (decode steps at `tokens_per_sec`) until
    `seconds` pass or `stop()` is true; returns the number of events published."""
    run = run or SyntheticRun(prefill_walk=8)
    end = None if seconds is None else time.monotonic() + seconds
    gap = 1.0 / max(tokens_per_sec, 1e-3)
    n = 0
    next_t = time.monotonic()
    for ev in run.events():
        if (end is not None and time.monotonic() >= end) or (stop is not None and stop()):
            break
        publish(ev)
        n += 1
        # pace on the last batch row of a decode step (one token step per gap)
        if isinstance(ev, DecodeState) and (ev.phase == "prefill" or ev.seq_index == ev.batch_size - 1):
            next_t += gap
            delay = next_t - time.monotonic()
            if delay > 0:
                if end is not None:
                    delay = min(delay, max(0.0, end - time.monotonic()))
                sleep(delay)
            else:
                next_t = time.monotonic()
    return n
