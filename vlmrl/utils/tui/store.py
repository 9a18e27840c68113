"""Reduce the event stream into one `DashboardState` snapshot the panels read.

`Store.apply(event)` is called once per event on the render thread, so it does O(1)
bookkeeping (no array copies: events are never mutated). JAX may drop, duplicate or
reorder debug callbacks, so every write is keyed: the latest decode per batch row is the
one with the highest step; per attention stat the newest step wins (taps send all layers
of a stat in one event, so that is the last write per (step, layer)); histories are keyed
by step (a duplicate replaces, a late arrival is inserted in order). A prefill event, or
a step far below the newest one, starts a new generation for that row when its wall time
is newer (a late duplicate is not a new generation). Malformed events are rejected whole
and listed in `problems`. `snapshot()` returns an immutable view, rebuilt only when
something changed.
"""
from __future__ import annotations

import bisect
import time
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from vlmrl.instrument.events import (
    ATTN_STATS,
    AttentionMatrix,
    CreditState,
    DecodeState,
    Event,
    RunInfo,
    TrainingState,
    event_from_dict,
)

from vlmrl.utils.tui.state import (  # noqa: F401  (re-exported: panels import them from here)
    EXPLORER_STEPS, HEAT_HZ, HISTORY, MAX_PROBLEMS, RECENT_TOKENS, REORDER_WINDOW,
    DashboardState, ExplorerStep, HistoryPoint, TokenRecord, _STORE_IDS,
)


class _Row:
    """Mutable per batch-row state inside the Store."""

    __slots__ = ("latest", "arrived", "gap", "recent", "explorer", "stats", "stat_step", "v", "frozen",
                 "stats_v", "stats_tick", "prev")

    def __init__(self) -> None:
        self.latest: Optional[DecodeState] = None
        self.arrived: Optional[float] = None
        self.gap: Optional[float] = None
        self.recent: List[TokenRecord] = []
        self.explorer: List[ExplorerStep] = []
        self.stats: Dict[str, np.ndarray] = {}
        self.stat_step: Dict[str, int] = {}
        self.v = 0
        self.frozen = None  # (v, recent, explorer, stats) as last handed to a snapshot
        self.stats_v = 0  # bumped when `stats` changes
        self.stats_tick: Optional[int] = None  # HEAT_HZ tick in which `stats` last changed
        # (stats, stats_v, step) as they stood before that tick; None: no older stats
        self.prev: Optional[tuple] = None

    def heat(self, tick: int, frozen_stats):
        """(stats, version, step) the heatmap shows at `tick`, and whether newer stats
        are held back until the next tick."""
        if self.prev is None or self.stats_tick is None or tick > self.stats_tick:
            return (frozen_stats, self.stats_v, max(self.stat_step.values(), default=-1)), False
        return self.prev, True

    def freeze(self):
        """Immutable views of this row, rebuilt only when the row changed since last time."""
        if self.frozen is None or self.frozen[0] != self.v:
            self.frozen = (self.v, tuple(self.recent), tuple(self.explorer), MappingProxyType(dict(self.stats)))
        return self.frozen


_RUN_INTS = ("num_layers", "num_heads", "num_kv_heads", "head_dim", "max_cache", "batch")
_DECODE_INTS = ("step", "token_id", "cache_len", "cache_max", "active_layer", "active_head", "mrope_t",
                "mrope_h", "mrope_w", "seq_index", "batch_size")


def _ints(ev, names) -> None:
    """Raise ValueError/TypeError naming the first field that is not a non-negative integer."""
    for name in names:
        value = getattr(ev, name)
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _step_of(item) -> int:
    return item.step


def _insert_by_step(items: list, item, limit: int) -> None:
    """Keep `items` sorted by .step with one entry per step; cap to the newest `limit`."""
    if not items or items[-1].step < item.step:
        items.append(item)  # the common, in-order case
    else:
        i = bisect.bisect_left(items, item.step, key=_step_of)
        if i < len(items) and items[i].step == item.step:
            items[i] = item  # duplicate callback: last write wins
        else:
            items.insert(i, item)
    if len(items) > limit:
        del items[: len(items) - limit]


class Store:
    """Reduces events into a `DashboardState`; `apply` per event, `snapshot` per frame."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, started_at: Optional[float] = None):
        self._clock = clock
        self._id = next(_STORE_IDS)
        self._started = clock() if started_at is None else float(started_at)
        self._rows: Dict[int, _Row] = {}
        self._run: Optional[RunInfo] = None
        self._training: Optional[TrainingState] = None
        self._history: List[HistoryPoint] = []
        self._credit: Optional[CreditState] = None
        self._matrix: Optional[AttentionMatrix] = None
        self._counts: Dict[str, int] = {}
        self._problems: List[str] = []
        self._last_event_at: Optional[float] = None
        self._v = {"all": 0, "run": 0, "decode": 0, "train": 0, "credit": 0, "matrix": 0}
        self._snap: Optional[DashboardState] = None
        self._heat_held: Optional[int] = None  # tick in which some row's newer stats are held back
        self._handlers = {
            DecodeState: self._on_decode,
            TrainingState: self._on_training,
            CreditState: self._on_credit,
            AttentionMatrix: self._on_matrix,
            RunInfo: self._on_run,
        }

    # -- intake -----------------------------------------------------------------------
    def apply(self, event: Any) -> None:
        """Fold one event in. Dicts (recorded form) are decoded; unknown types are counted."""
        if isinstance(event, dict):
            try:
                event = event_from_dict(event)
            except (ValueError, TypeError) as exc:
                self._problem(f"bad event dict: {exc}")
                return
        handler = self._handlers.get(type(event))
        kind = getattr(event, "kind", type(event).__name__) if isinstance(event, Event) else "unknown"
        self._counts[kind] = self._counts.get(kind, 0) + 1
        self._last_event_at = self._clock()
        self._v["all"] += 1
        if handler is None:
            self._problem(f"ignored event of type {type(event).__name__}")
            return
        try:
            handler(event)
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            # A field of the wrong type (untrusted producer): say so on screen, keep going.
            self._problem(f"bad {kind} event: {type(exc).__name__}: {exc}")

    def _problem(self, msg: str) -> None:
        if msg not in self._problems:
            self._problems.append(msg)
            del self._problems[:-MAX_PROBLEMS]
        self._v["all"] += 1

    def _bump(self, section: str) -> None:
        self._v[section] += 1

    def _on_run(self, ev: RunInfo) -> None:
        _ints(ev, _RUN_INTS)
        for layer in ev.deepstack_layers:
            int(layer)  # raises on a malformed recording; apply reports it
        for name in ("device_memory_in_use", "device_memory_limit"):
            if getattr(ev, name) is not None:
                int(getattr(ev, name))
        self._run = ev
        self._bump("run")

    def _on_training(self, ev: TrainingState) -> None:
        if self._training is None or ev.step >= self._training.step:
            self._training = ev
        point = HistoryPoint(int(ev.step), float(ev.reward_mean), float(ev.reward_std), float(ev.kl))
        _insert_by_step(self._history, point, HISTORY)
        self._bump("train")

    def _on_credit(self, ev: CreditState) -> None:
        if len(ev.tokens) != len(ev.credits):
            self._problem(f"credit step {ev.step}: {len(ev.tokens)} tokens vs {len(ev.credits)} credits")
            return
        if self._credit is None or ev.step >= self._credit.step:
            self._credit = ev
            self._bump("credit")

    def _on_matrix(self, ev: AttentionMatrix) -> None:
        m = ev.matrix
        if m is not None and np.ndim(m) != 2:
            self._problem(f"attention matrix step {ev.step}: expected 2-D, got shape {np.shape(m)}")
            return
        self._matrix = ev
        self._bump("matrix")

    def _on_decode(self, ev: DecodeState) -> None:
        # Panels trust these types; a malformed event is rejected whole (reported by apply).
        _ints(ev, _DECODE_INTS)
        for name, n in (("vision_span", 2), ("vision_grid", 3)):
            value = getattr(ev, name)
            if value is not None and len([int(v) for v in value]) != n:
                raise ValueError(f"{name} must have {n} integers, got {value!r}")
        now = self._clock()
        b = int(ev.seq_index)
        row = self._rows.get(b)
        if row is None:
            row = self._rows[b] = _Row()
        latest = row.latest
        # A new generation restarts the step count; a late duplicate of an old callback
        # also has a low step, but its wall time is older than the newest event's.
        new_gen = (
            latest is not None
            and ev.wall_time > latest.wall_time
            and ((ev.phase == "prefill" and latest.phase != "prefill") or ev.step < latest.step - REORDER_WINDOW)
        )
        if new_gen:
            row.recent, row.explorer, row.stats, row.stat_step = [], [], {}, {}
            row.stats_v += 1
            row.stats_tick, row.prev = None, None  # a new generation's stats show at once
            latest = None
        if row.arrived is not None:
            # Smoothed gap between this row's events (a batch's rows arrive together, so a
            # global gap would be ~0): the flow panel paces its sweep on it.
            gap = min(max(now - row.arrived, 0.0), 2.0)
            row.gap = gap if row.gap is None else 0.8 * row.gap + 0.2 * gap
        if latest is None or ev.step >= latest.step:
            row.latest = ev
        row.arrived = now
        row.v += 1  # first: even a half-applied bad event invalidates the row's frozen views
        self._bump("decode")
        self._record_tokens(row, ev)
        self._record_stats(row, ev, now)

    def _record_tokens(self, row: _Row, ev: DecodeState) -> None:
        step = int(ev.step)
        record = TokenRecord(step, int(ev.token_id), str(ev.token_text), float(ev.token_prob))
        _insert_by_step(row.recent, record, RECENT_TOKENS)
        if ev.attention_row is not None:
            arr = np.asarray(ev.attention_row, dtype=np.float32).reshape(-1)
            item = ExplorerStep(step, int(ev.token_id), str(ev.token_text), int(ev.cache_len), arr)
            _insert_by_step(row.explorer, item, EXPLORER_STEPS)

    def _record_stats(self, row: _Row, ev: DecodeState, now: float) -> None:
        given = ev.attn_stats or {}
        if "focus" not in given and ev.attention_pattern is not None:
            given = dict(given, focus=ev.attention_pattern)
        if not given:
            return
        tick = int(now * HEAT_HZ)
        if row.stats_tick != tick:
            # the first update of a new tick: what stood before it is what the heatmap
            # shows until the next tick begins
            if row.stats:
                row.prev = (MappingProxyType(dict(row.stats)), row.stats_v, max(row.stat_step.values(), default=-1))
            row.stats_tick = tick
        step = int(ev.step)
        for name, value in given.items():
            if name not in ATTN_STATS:
                self._problem(f"unknown attention stat {name!r}")
                continue
            arr = np.asarray(value, dtype=np.float32)  # no copy when already float32
            if arr.ndim != 2:
                self._problem(f"attn stat {name!r} step {ev.step}: expected [layers, heads], got {arr.shape}")
                continue
            # Taps send every layer of a stat in one event, so "last write per (step, layer)"
            # is one step per stat: an older (late or duplicated) callback never wins.
            old = row.stats.get(name)
            if old is None or old.shape != arr.shape or step >= row.stat_step.get(name, step):
                row.stats[name] = arr
                row.stat_step[name] = step
                row.stats_v += 1

    def copy(self) -> "Store":
        """An independent copy (replay checkpoints) with its own store_id, so the layout
        never mistakes the copy's versions for the original's."""
        out = Store(clock=self._clock, started_at=self._started)
        for name in ("_run", "_training", "_credit", "_matrix", "_last_event_at"):
            setattr(out, name, getattr(self, name))
        out._history = list(self._history)
        out._counts = dict(self._counts)
        out._problems = list(self._problems)
        out._v = dict(self._v)
        for b, row in self._rows.items():
            r = out._rows[b] = _Row()
            r.latest, r.arrived, r.gap, r.v = row.latest, row.arrived, row.gap, row.v
            r.recent, r.explorer = list(row.recent), list(row.explorer)
            r.stats, r.stat_step = dict(row.stats), dict(row.stat_step)  # arrays are never mutated
            r.stats_v, r.stats_tick, r.prev = row.stats_v, row.stats_tick, row.prev
        return out

    # -- output -----------------------------------------------------------------------
    def snapshot(self) -> DashboardState:
        """The current state; the same object until the next event changes something (or,
        while newer heatmap stats are held back, until the next HEAT_HZ tick)."""
        tick = int(self._clock() * HEAT_HZ)
        if self._snap is not None and self._snap.version == self._v["all"] and (
                self._heat_held is None or self._heat_held == tick):
            return self._snap
        rows = sorted(self._rows.items())
        v = self._v
        decodes = {b: r.latest for b, r in rows if r.latest is not None}
        frozen = {b: r.freeze() for b, r in rows}
        heat = {b: r.heat(tick, frozen[b][3]) for b, r in rows}
        self._heat_held = tick if any(h[1] for h in heat.values()) else None
        self._snap = DashboardState(
            store_id=self._id,
            row_v=MappingProxyType({b: r.v for b, r in rows}),
            batch=DashboardState._batch_of(decodes, self._run),
            version=v["all"],
            run_v=v["run"],
            decode_v=v["decode"],
            train_v=v["train"],
            credit_v=v["credit"],
            matrix_v=v["matrix"],
            started_at=self._started,
            last_event_at=self._last_event_at,
            run=self._run,
            decodes=MappingProxyType(decodes),
            decode_at=MappingProxyType({b: r.arrived for b, r in rows if r.latest is not None}),
            decode_gap=MappingProxyType({b: r.gap for b, r in rows if r.gap is not None}),
            recent=MappingProxyType({b: f[1] for b, f in frozen.items()}),
            stats=MappingProxyType({b: f[3] for b, f in frozen.items()}),
            heat=MappingProxyType({b: h[0][0] for b, h in heat.items()}),
            heat_step=MappingProxyType({b: h[0][2] for b, h in heat.items() if h[0][2] >= 0}),
            heat_v=MappingProxyType({b: h[0][1] for b, h in heat.items()}),
            training=self._training,
            history=tuple(self._history),
            credit=self._credit,
            matrix=self._matrix,
            explorer=MappingProxyType({b: f[2] for b, f in frozen.items()}),
            counts=MappingProxyType(dict(self._counts)),
            problems=tuple(self._problems),
        )
        return self._snap
