"""Plain log lines for when there is no terminal to draw on (batch jobs, `| tee`, after `q`).

One line per TrainingState and per UpdateStats, one line for the run's shape (RunInfo, again only when the
shape changes), one when it starts compiling and one when that is done, one when it ends,
and a decode summary at most every `summary_every` seconds. Not one escape byte: every piece of text that came from the
model or a file goes through `canvas.sanitize` (controls become visible pictures), and
numbers are formatted here.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
from typing import Callable, Optional, TextIO

from vlmrl.instrument.events import CreditState, DecodeState, Event, RunEnd, RunInfo, TrainingState, UpdateStats
from vlmrl.utils.tui.canvas import sanitize, truncate
from vlmrl.utils.tui.panels.common import fmt_scale
from vlmrl.utils.tui.update_math import alerts, fmt_ratio


# RunInfo fields that change while a run keeps its shape
_VOLATILE = frozenset({"status", "status_seconds", "wall_time", "device_memory_in_use"})


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
        self._row_steps: dict = {}  # row -> (generation, step) of its newest decode event
        self._span: Optional[list] = None  # [first, last] wall_time of decode events this window
        self._shape: Optional[tuple] = None  # the RunInfo shape the run line printed
        self._status = ""  # the run's status while it is not training yet ("compiling ...")
        self._status_seconds = None
        self._landed = False  # an update landed while the run's status still said compiling
        self._recent: list = []
        self._last_summary = self.t0
        self._last_credit: Optional[CreditState] = None
        self._last_update: Optional[UpdateStats] = None
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
            if self._status:  # the first update landed: what was compiling is done
                self._status_done()
                self._landed = True
            self._emit(self.training_line(event))
        elif isinstance(event, DecodeState):
            self._last_decode = event
            self._count_tokens(event)
            if event.phase != "prefill" and event.seq_index == 0:
                self._recent.append(event.token_text)
                del self._recent[:-12]
        elif isinstance(event, RunInfo):
            self._run_info(event)
        elif isinstance(event, CreditState):
            self._last_credit = event
        elif isinstance(event, UpdateStats):
            prev = self._last_update
            if prev is None or event.step > prev.step:
                self._last_update = event
            self._emit(self.update_line(event, prev if prev is not None and prev.step < event.step else None))
        elif isinstance(event, RunEnd):
            step = "no step finished" if event.step is None else f"last step {event.step}"
            self._emit(f"run {sanitize(str(event.reason))} | {step} | {_num(event.seconds, '.1f')} s")

    def _run_info(self, r: RunInfo) -> None:
        # a run republishes RunInfo while compiling (status ticks): one line per new shape,
        # one when the status starts and one when it clears
        shape = tuple(getattr(r, f.name) for f in dataclasses.fields(r) if f.name not in _VOLATILE)
        if shape != self._shape:
            self._shape = shape
            self._emit(self.run_line(r))
        status = str(r.status or "")
        if self._landed:
            # a tick of the status that crossed the first update on its way: the run
            # clears the status next; nothing to say until then
            self._landed = bool(status)
            return
        if status and not self._status:
            self._emit(f"{truncate(status, 80)} ...")
        elif self._status and not status:
            self._status_done()
        self._status = status
        if status:
            self._status_seconds = r.status_seconds

    def _status_done(self) -> None:
        took = "" if self._status_seconds is None else f" after {_num(self._status_seconds, '.0f')} s"
        self._emit(f"compiled{took}; training" if self._status.startswith("compiling") else f"ready{took}")
        self._status, self._status_seconds = "", None

    def _count_tokens(self, d: DecodeState) -> None:
        """Tokens the sampler emitted, from the step keys: the taps emit every `stride`-th step,
        so a row that moved from step a to step b produced b - a tokens in between."""
        prev = self._row_steps.get(d.seq_index)
        key = (d.generation, d.step)
        if prev is None or prev[0] != d.generation:
            if len(self._row_steps) > 4096:  # bounded: rows of finished generations go
                self._row_steps.clear()
            self._tokens_since += 1
        elif d.step > prev[1]:
            self._tokens_since += d.step - prev[1]
        self._row_steps[d.seq_index] = key
        t = float(d.wall_time) if isinstance(d.wall_time, (int, float)) and math.isfinite(d.wall_time) else None
        if t is not None:
            self._span = [t, t] if self._span is None else [min(self._span[0], t), max(self._span[1], t)]

    def tick(self, now: Optional[float] = None) -> None:
        """Emit the decode summary when one is due."""
        now = self.clock() if now is None else now
        if now - self._last_summary >= self.summary_every and self._tokens_since:
            # the rate over the events' own clock: right for a live run and for a log read back fast
            span = self._span[1] - self._span[0] if self._span is not None else 0.0
            rate = self._tokens_since / span if span > 0 else None
            self._emit(self.decode_line(self._last_decode, rate))
            self._tokens_since = 0
            self._span = None
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
        if t.learning_rate is not None:
            parts.append(f"lr {_num(t.learning_rate, '.2e')}")
        if t.update_tokens_per_sec is not None:
            parts.append(f"update {_num(t.update_tokens_per_sec, '.0f')} tok/s")
        if self._last_credit is not None and self._last_credit.tokens:
            c = self._last_credit
            i = max(range(min(len(c.tokens), len(c.credits))), key=lambda k: abs(float(c.credits[k])), default=None)
            if i is not None:
                parts.append(f"top credit {truncate(str(c.tokens[i]), 16)!s}={_num(c.credits[i], '+.3f')}")
        if self.dropped:
            parts.append(f"dropped {self.dropped}")
        return " | ".join(parts)

    def update_line(self, u: UpdateStats, prev: Optional[UpdateStats]) -> str:
        """The update taps' global figures, the spread of the layers' ||Δw||/||w|| and the alerts."""
        parts = [f"update step {u.step}", f"grad {_num(u.grad_norm, '.3f')} before clipping (max {_num(u.grad_norm_max, '.3f')})",
                 f"clip x{_num(u.clip_factor, '.3f')}"]
        try:
            lay = [float(x) for x in u.layer_ratio] if u.layer_ratio is not None else []
        except (TypeError, ValueError):
            lay = []
        lay = [x for x in lay if math.isfinite(x)]
        if lay:
            parts.append(f"dw/w layers {fmt_ratio(min(lay))}..{fmt_ratio(max(lay))}")
        try:
            up, dead = alerts(prev, u)
        except (TypeError, ValueError):
            up, dead = [], []
        if up:
            parts.append("exploding " + " ".join(f"{n} x{f:.0f}" for n, f in up[:6]))
        if dead:
            parts.append("dead " + " ".join(dead[:6]) + (f" +{len(dead) - 6}" if len(dead) > 6 else ""))
        return " | ".join(parts)

    def decode_line(self, d: DecodeState, tok_rate: Optional[float]) -> str:
        recent = truncate("".join(str(t) for t in self._recent), 48)
        self._recent.clear()
        return (f"decode step {d.step} | cache {d.cache_len}/{d.cache_max} | {_num(tok_rate, '.1f')} tok/s | "
                f"last {truncate(str(d.token_text), 20)!r} p={_num(d.token_prob, '.2f')} | recent {recent!r}")

    def run_line(self, r: RunInfo) -> str:
        return (f"run {truncate(str(r.model_name), 32)} | {r.num_layers} layers x {r.num_heads} heads "
                f"(kv {r.num_kv_heads}, dim {r.head_dim}, {sanitize(str(r.dtype))}) | cache {r.max_cache} | "
                f"batch {r.batch} | device {truncate(str(r.device_kind), 24)}"
                + (f" x {fmt_scale(r)}" if fmt_scale(r) else ""))

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
