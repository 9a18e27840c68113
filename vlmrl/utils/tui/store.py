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
something changed, and then only the sections that did (it runs every frame on a thread
that sleeps in between, so each object it touches is a cache miss).
"""
from __future__ import annotations

import math
import operator
import time
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from vlmrl.instrument.events import (ATTN_STATS, AttentionMatrix, CreditState, DecodeState, Event, GroupState,
                                     ImageAttention, ImageState, MemoryPlan, RunEnd, RunInfo, TrainingState,
                                     UpdateStats, decode_event, validate)
from vlmrl.utils.tui.group_data import check_group
from vlmrl.utils.tui.image_data import ImageLog
from vlmrl.utils.tui.state import (  # noqa: F401  (re-exported: panels import them from here)
    DEFAULT_FIELDS, EXPLORER_BYTES, EXPLORER_STEPS, HEAT_HZ, HISTORY, MAX_PROBLEMS, MAX_ROWS, RECENT_TOKENS,
    REORDER_WINDOW, Comparison, DashboardState, ExplorerStep, FrozenLogs, HistoryPoint, StepLog, TokenRecord,
    insert_by_step,
)
from vlmrl.utils.tui.update_math import checked_update, update_shape

_F32 = np.dtype(np.float32)
# For the C-level check of a decode event's usual stats (see Store._record_stats).
_STAT_NAMES, _NDARRAY, _F32_SET, _TWO = frozenset(ATTN_STATS), frozenset({np.ndarray}), frozenset({_F32}), frozenset({2})
_DTYPE, _NDIM = operator.attrgetter("dtype"), operator.attrgetter("ndim")


def _scalar(value) -> float:
    """A logged scalar as a float; NaN when the run did not log it."""
    return math.nan if value is None else float(value)


class _Row:
    """Mutable per batch-row state inside the Store."""

    __slots__ = ("latest", "arrived", "gap", "recent", "explorer", "stats", "stat_step", "v", "frozen",
                 "stats_v", "stats_tick", "prev")

    def __init__(self) -> None:
        self.latest: Optional[DecodeState] = None
        self.arrived: Optional[float] = None
        self.gap: Optional[float] = None
        self.recent = StepLog(RECENT_TOKENS)  # TokenRecords
        self.explorer = StepLog(EXPLORER_STEPS)  # ExplorerSteps
        self.stats: Dict[str, np.ndarray] = {}
        self.stat_step: Dict[str, int] = {}
        self.v = 0
        self.frozen = None  # (stats_v, read-only view of `stats`) as last handed out
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

    def frozen_stats(self):
        """A read-only copy of `stats`, made once per change of them."""
        if self.frozen is None or self.frozen[0] != self.stats_v:
            self.frozen = (self.stats_v, MappingProxyType(dict(self.stats)))
        return self.frozen[1]


class Store:
    """Reduces events into a `DashboardState`; `apply` per event, `snapshot` per frame."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, started_at: Optional[float] = None,
                 compare: Optional[Comparison] = None):
        self._clock = clock
        self._compare = compare
        self._id = object()  # this store's identity token (DashboardState.store_id)
        self._started = clock() if started_at is None else float(started_at)
        self._rows: Dict[int, _Row] = {}
        self._run: Optional[RunInfo] = None
        self._end: Optional[RunEnd] = None
        self._training: Optional[TrainingState] = None
        self._history: List[HistoryPoint] = []
        self._credit: Optional[CreditState] = None
        self._group: Optional[GroupState] = None
        self._matrix: Optional[AttentionMatrix] = None
        self._plan: Optional[MemoryPlan] = None
        self._updates: List[UpdateStats] = []  # by step, the newest HISTORY (update taps)
        self._images = ImageLog()  # the image view's (key v) own bounded state
        self._counts: Dict[str, int] = {}
        self._problems: List[str] = []
        self.rows_dropped = 0  # batch rows forgotten to stay within MAX_ROWS
        self._last_event_at: Optional[float] = None
        self._v = {"all": 0, "run": 0, "decode": 0, "train": 0, "credit": 0, "group": 0, "matrix": 0, "update": 0}
        self._snap: Optional[DashboardState] = None
        self._heat_held: Optional[int] = None  # tick in which some row's newer stats are held back
        self.stale_events = 0  # decode events of an older generation that arrived after a newer one
        # Bumped before anything touches a row (even by an event later rejected): the
        # snapshot rebuilds its per-row sections only when it moved.
        self._rows_v = 0
        # The next snapshot's fields; `snapshot` refreshes the sections that changed.
        self._fields = dict(DEFAULT_FIELDS, store_id=self._id, started_at=self._started)
        self._built = {"rows": None, "train": None}  # versions the sections in _fields are of
        self._handlers = {
            DecodeState: self._on_decode,
            TrainingState: self._on_training,
            CreditState: self._on_credit,
            GroupState: self._on_group,
            AttentionMatrix: self._on_matrix,
            UpdateStats: self._on_update,
            RunInfo: self._on_run,
            RunEnd: self._on_end,
            MemoryPlan: self._on_plan,
            ImageState: self._on_image,
            ImageAttention: self._on_image,
        }

    # -- intake -----------------------------------------------------------------------
    def apply(self, event: Any) -> None:
        """Fold one event in. Dicts (recorded form) are decoded; an event with a field out of
        its type or bounds (`events.validate`) is rejected whole and listed in `problems`."""
        handler = self._handlers.get(type(event))
        if handler is None and isinstance(event, dict):
            try:
                event = decode_event(event)
            except ValueError as exc:
                self._problem(f"bad event dict: {exc}")
                return
            handler = self._handlers.get(type(event))
        elif handler is not None:
            try:
                validate(event)
            except ValueError as exc:
                self._count(event.kind)
                self._problem(f"bad {event.kind} event: {exc}")
                return
        if handler is not None:
            kind = event.kind
        else:
            kind = getattr(event, "kind", type(event).__name__) if isinstance(event, Event) else "unknown"
        self._count(kind)
        if handler is None:
            self._problem(f"ignored event of type {type(event).__name__}")
            return
        handler(event)

    def _count(self, kind: str) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        self._last_event_at = self._clock()  # handlers read it as the arrival time
        self._v["all"] += 1

    def _problem(self, msg: str) -> None:
        msg = msg if len(msg) <= 160 else msg[:159] + "…"
        if msg not in self._problems:
            self._problems.append(msg)
            del self._problems[:-MAX_PROBLEMS]
        self._v["all"] += 1

    def _bump(self, section: str) -> None:
        self._v[section] += 1

    def _on_run(self, ev: RunInfo) -> None:
        self._run = ev
        self._bump("run")

    def _on_end(self, ev: RunEnd) -> None:
        self._end = ev
        self._bump("run")

    def _on_plan(self, ev: MemoryPlan) -> None:
        self._plan = ev
        self._bump("run")

    def _on_training(self, ev: TrainingState) -> None:
        if self._training is None or ev.step >= self._training.step:
            self._training = ev
        point = HistoryPoint(int(ev.step), *(_scalar(getattr(ev, name)) for name in HistoryPoint._fields[1:]))
        insert_by_step(self._history, point, HISTORY)
        self._bump("train")

    def _on_credit(self, ev: CreditState) -> None:
        if len(ev.tokens) != len(ev.credits):
            self._problem(f"credit step {ev.step}: {len(ev.tokens)} tokens vs {len(ev.credits)} credits")
            return
        if self._credit is None or ev.step >= self._credit.step:
            self._credit = ev
            self._bump("credit")

    def _on_group(self, ev: GroupState) -> None:
        try:
            check_group(ev)  # the group view's own consistency checks, before anything is kept
        except ValueError as exc:
            self._problem(f"bad group event: {exc}")
            return
        if self._group is None or ev.step >= self._group.step:
            self._group = ev
            self._bump("group")

    def _on_matrix(self, ev: AttentionMatrix) -> None:
        m = ev.matrix
        if m is not None and np.ndim(m) != 2:
            self._problem(f"attention matrix step {ev.step}: expected 2-D, got shape {np.shape(m)}")
            return
        self._matrix = ev
        self._bump("matrix")

    def _on_image(self, ev) -> None:
        problem = self._images.apply(ev)
        if problem is not None:
            self._problem(f"bad {ev.kind} event: {problem}")

    def _on_update(self, ev: UpdateStats) -> None:
        try:
            ev = checked_update(ev)  # the update view's own consistency checks, before anything is kept
        except ValueError as exc:
            self._problem(f"bad update_stats event: {exc}")
            return
        if self._updates and update_shape(self._updates[-1]) != update_shape(ev):
            self._updates = []  # another model (a new run in the same log): its own history
        insert_by_step(self._updates, ev, HISTORY)
        self._bump("update")

    def _on_decode(self, ev: DecodeState) -> None:
        # apply() validated every field, so nothing below can reject the event half-way
        b = int(ev.seq_index)
        row = self._rows.get(b)
        now = self._last_event_at
        self._rows_v += 1
        if row is None:
            if len(self._rows) >= MAX_ROWS:
                self._drop_least_recent_row()
            row = self._rows[b] = _Row()
        latest = row.latest
        if latest is not None and ev.generation and latest.generation:
            # Taps number their generate() calls: callbacks are unordered, so a prefill that
            # lands after its own decode steps is the same generation, and a straggler of an
            # older one is dropped rather than mixed into the newer.
            if ev.generation < latest.generation:
                self.stale_events += 1
                return
            new_gen = ev.generation > latest.generation
        else:
            # No generation ids (older logs): a new generation restarts the step count; a late
            # duplicate of an old callback also has a low step, but an older wall time.
            new_gen = (
                latest is not None
                and ev.wall_time > latest.wall_time
                and ((ev.phase == "prefill" and latest.phase != "prefill") or ev.step < latest.step - REORDER_WINDOW)
            )
        if new_gen:
            row.recent, row.explorer = StepLog(RECENT_TOKENS), StepLog(EXPLORER_STEPS)
            row.stats, row.stat_step = {}, {}
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
        row.v += 1  # before recording: even a half-applied bad event changes row_version
        self._v["decode"] += 1
        step = int(ev.step)
        self._record_tokens(row, ev, step)
        self._record_stats(row, ev, now, step)

    def _drop_least_recent_row(self) -> None:
        """Make room for a new batch row: forget the one that has gone longest without an event."""
        oldest = min(self._rows, key=lambda k: self._rows[k].arrived or 0.0)
        del self._rows[oldest]
        self.rows_dropped += 1
        self._problem(f"more than {MAX_ROWS} batch rows: the least recently updated are dropped")

    def _record_tokens(self, row: _Row, ev: DecodeState, step: int) -> None:
        token_id, text = int(ev.token_id), str(ev.token_text)
        row.recent.add(TokenRecord(step, token_id, text, float(ev.token_prob)))
        arr = ev.attention_row
        if arr is not None:
            if type(arr) is not np.ndarray or arr.dtype is not _F32 or arr.ndim != 1:
                arr = np.asarray(arr, dtype=np.float32).reshape(-1)
            # bounded in bytes: rows of a long cache keep fewer steps
            row.explorer.limit = max(1, min(EXPLORER_STEPS, EXPLORER_BYTES // max(arr.nbytes, 1)))
            row.explorer.add(ExplorerStep(step, token_id, text, int(ev.cache_len), arr))

    def _record_stats(self, row: _Row, ev: DecodeState, now: float, step: int) -> None:
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
                row.prev = (row.frozen_stats(), row.stats_v, max(row.stat_step.values(), default=-1))
            row.stats_tick = tick
        vals = given.values()
        if (given.keys() <= _STAT_NAMES and set(map(type, vals)) == _NDARRAY and set(map(_DTYPE, vals)) == _F32_SET
                and set(map(_NDIM, vals)) == _TWO and step >= max(row.stat_step.values(), default=step)):
            # The usual event, checked in C: known float32 [layers, heads] stats of a step
            # no older than any held, so every one is taken (as the loop below would).
            row.stats.update(given)
            row.stat_step.update(dict.fromkeys(given, step))
            row.stats_v += len(given)
            return
        for name, value in given.items():
            if name not in ATTN_STATS:
                self._problem(f"unknown attention stat {name!r}")
                continue
            arr = value
            if type(arr) is not np.ndarray or arr.dtype is not _F32:
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
        out = Store(clock=self._clock, started_at=self._started, compare=self._compare)
        for name in ("_run", "_end", "_plan", "_training", "_credit", "_group", "_matrix", "_last_event_at"):
            setattr(out, name, getattr(self, name))
        out._history = list(self._history)
        out._updates, out._images = list(self._updates), self._images.copy()
        out._counts = dict(self._counts)
        out._problems = list(self._problems)
        out.rows_dropped = self.rows_dropped
        out._v = dict(self._v)
        for b, row in self._rows.items():
            r = out._rows[b] = _Row()
            r.latest, r.arrived, r.gap, r.v = row.latest, row.arrived, row.gap, row.v
            r.recent, r.explorer = row.recent.copy(), row.explorer.copy()  # never share a StepLog
            r.stats, r.stat_step = dict(row.stats), dict(row.stat_step)  # arrays are never mutated
            r.stats_v, r.stats_tick, r.prev = row.stats_v, row.stats_tick, row.prev
        return out

    # -- output -----------------------------------------------------------------------
    def snapshot(self) -> DashboardState:
        """The current state; the same object until the next event changes something (or,
        while newer heatmap stats are held back, until the next HEAT_HZ tick)."""
        tick = int(self._clock() * HEAT_HZ)
        v = self._v
        if self._snap is not None and self._snap.version == v["all"] and (
                self._heat_held is None or self._heat_held == tick):
            return self._snap
        f, built = self._fields, self._built
        # Held-back heat changes with the tick alone; otherwise rows change only by events.
        if built["rows"] != self._rows_v or self._heat_held is not None:
            self._heat_held = self._row_fields(f, tick)
            built["rows"] = self._rows_v
        if built["train"] != v["train"]:
            f["history"] = tuple(self._history)
            built["train"] = v["train"]
        f["batch"] = DashboardState._batch_of(f["decodes"], self._run)
        f["version"], f["run_v"], f["decode_v"] = v["all"], v["run"], v["decode"]
        f["train_v"], f["credit_v"], f["matrix_v"] = v["train"], v["credit"], v["matrix"]
        f["run"], f["training"] = self._run, self._training
        f["run_end"] = self._end
        f["credit"], f["matrix"] = self._credit, self._matrix
        f["group"], f["group_v"], f["compare"] = self._group, v["group"], self._compare
        f["plan"], f["images"] = self._plan, self._images.view()
        if f["update_v"] != v["update"]:
            f["updates"], f["update_v"] = tuple(self._updates), v["update"]
        f["counts"] = MappingProxyType(dict(self._counts))
        f["problems"] = tuple(self._problems)
        self._snap = DashboardState._make(f)
        return self._snap

    def _row_fields(self, f: dict, tick: int) -> Optional[int]:
        """Set the per batch-row fields in `f` (one pass over the rows); return `tick`
        when some row's newer heatmap stats are held back until the next tick, else None."""
        row_v, decodes, decode_at, gap, recent, explorer = {}, {}, {}, {}, {}, {}
        stats, heat, heat_step, heat_v = {}, {}, {}, {}
        held = None
        for b in sorted(self._rows):
            r = self._rows[b]
            row_v[b] = r.v
            if r.latest is not None:
                decodes[b] = r.latest
                decode_at[b] = r.arrived
            if r.gap is not None:
                gap[b] = r.gap
            recent[b] = r.recent.view()
            explorer[b] = r.explorer.view()
            stats[b] = s = r.frozen_stats()
            (heat[b], heat_v[b], step), held_back = r.heat(tick, s)
            if step >= 0:
                heat_step[b] = step
            if held_back:
                held = tick
        f["row_v"], f["decodes"] = MappingProxyType(row_v), MappingProxyType(decodes)
        f["decode_at"], f["decode_gap"] = MappingProxyType(decode_at), MappingProxyType(gap)
        f["recent"], f["explorer"] = FrozenLogs(recent), FrozenLogs(explorer)
        f["stats"], f["heat"] = MappingProxyType(stats), MappingProxyType(heat)
        f["heat_step"], f["heat_v"] = MappingProxyType(heat_step), MappingProxyType(heat_v)
        return held

