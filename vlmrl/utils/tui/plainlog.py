"""Plain log lines for when there is no terminal to draw on (batch jobs, `| tee`, after `q`).

One line per TrainingState, one line for the RunInfo, and a decode summary at most every
`summary_every` seconds. Not one escape byte: every piece of text that came from the
model or a file goes through `canvas.sanitize` (controls become visible pictures), and
numbers are formatted here.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Callable, Optional, TextIO

from vlmrl.instrument.events import CreditState, DecodeState, Event, RunInfo, TrainingState
from vlmrl.utils.tui.canvas import sanitize, truncate


def _num(value, fmt: str) -> str:
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return str(v)
    return format(v, fmt)


def _clock(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


class FdWriter:
    """A minimal text stream over a raw fd (the terminal the dashboard was drawn on)."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        return len(text)

    def flush(self) -> None:
        pass


class PlainLog:
    """Turns events into plain lines on `stream`; `feed` each event, `tick` now and then."""

    def __init__(self, stream: Optional[TextIO] = None, summary_every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stdout
        self.summary_every = float(summary_every)
        self.clock = clock
        self.t0 = clock()
        self.dropped = 0
        self._last_decode: Optional[DecodeState] = None
        self._tokens_since = 0
        self._recent: list = []
        self._last_summary = self.t0
        self._last_credit: Optional[CreditState] = None
        self.lines = 0

    def _emit(self, text: str) -> None:
        # sanitize once more as a whole: a line can never carry a control character
        line = f"[{_clock(self.clock() - self.t0)}] {sanitize(text)}"
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # closed pipe: the run must go on
        self.lines += 1

    def feed(self, event: Event) -> None:
        if isinstance(event, TrainingState):
            self._emit(self.training_line(event))
        elif isinstance(event, DecodeState):
            self._last_decode = event
            if event.phase != "prefill" and event.seq_index == 0:
                self._tokens_since += 1
                self._recent.append(event.token_text)
                del self._recent[:-12]
        elif isinstance(event, RunInfo):
            self._emit(self.run_line(event))
        elif isinstance(event, CreditState):
            self._last_credit = event

    def tick(self, now: Optional[float] = None) -> None:
        """Emit the decode summary when one is due."""
        now = self.clock() if now is None else now
        if now - self._last_summary >= self.summary_every and self._last_decode is not None:
            elapsed = now - self._last_summary
            self._emit(self.decode_line(self._last_decode, self._tokens_since / max(elapsed, 1e-9)))
            self._tokens_since = 0
            self._last_summary = now

    def training_line(self, t: TrainingState) -> str:
        parts = [f"train step {t.step}",
                 f"reward {_num(t.reward_mean, '.3f')}±{_num(t.reward_std, '.3f')}",
                 f"kl {_num(t.kl, '.4f')}", f"loss {_num(t.loss, '.4f')}",
                 f"{_num(t.tokens_per_sec, '.0f')} tok/s"]
        if t.policy_entropy is not None:
            parts.append(f"entropy {_num(t.policy_entropy, '.3f')}")
        if t.clip_fraction is not None:
            parts.append(f"clip {_num(t.clip_fraction, '.3f')}")
        if t.grad_norm is not None:
            parts.append(f"grad {_num(t.grad_norm, '.3f')}")
        if self._last_credit is not None and self._last_credit.tokens:
            c = self._last_credit
            i = max(range(min(len(c.tokens), len(c.credits))), key=lambda k: abs(float(c.credits[k])), default=None)
            if i is not None:
                parts.append(f"top credit {truncate(str(c.tokens[i]), 16)!s}={_num(c.credits[i], '+.3f')}")
        if self.dropped:
            parts.append(f"dropped {self.dropped}")
        return " | ".join(parts)

    def decode_line(self, d: DecodeState, tok_rate: float) -> str:
        recent = truncate("".join(str(t) for t in self._recent), 48)
        self._recent.clear()
        return (f"decode step {d.step} | cache {d.cache_len}/{d.cache_max} | {tok_rate:.1f} tok/s | "
                f"last {truncate(str(d.token_text), 20)!r} p={_num(d.token_prob, '.2f')} | recent {recent!r}")

    def run_line(self, r: RunInfo) -> str:
        return (f"run {truncate(str(r.model_name), 32)} | {r.num_layers} layers x {r.num_heads} heads "
                f"(kv {r.num_kv_heads}, dim {r.head_dim}, {sanitize(str(r.dtype))}) | cache {r.max_cache} | "
                f"batch {r.batch} | device {truncate(str(r.device_kind), 24)}")

    def run(self, sub, stop: threading.Event, poll: float = 0.5) -> None:
        """Consume a bus subscription until `stop` is set (the plain-log thread's body)."""
        while not stop.is_set():
            sub.wait(poll)
            for ev in sub.drain():
                self.feed(ev)
            self.dropped = sub.total_dropped
            self.tick()
        for ev in sub.drain():
            self.feed(ev)
