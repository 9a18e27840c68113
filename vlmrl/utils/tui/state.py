"""The dashboard's immutable snapshot (`DashboardState`) and the records it holds.

Built by `store.Store.snapshot()`; read by the panels. Kept apart from the reducer so the
panels' inputs can be read in one place.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Mapping as _MappingABC
from types import MappingProxyType
from typing import Any, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from vlmrl.instrument.events import (AttentionMatrix, CreditState, DecodeState, GroupState, MemoryPlan, RunEnd,
                                     RunInfo, TrainingState, UpdateStats)

RECENT_TOKENS = 64  # decode rows show at most this many recent tokens
# Training steps kept for the header sparklines and the charts view (the whole of most
# runs; a longer one shows its newest steps): 4096 points of 11 floats, about 1 MB.
HISTORY = 4096
EXPLORER_STEPS = 1024  # generation steps (attention rows) kept per batch row
EXPLORER_BYTES = 4 << 20  # ... and at most this many bytes of attention rows per batch row
MAX_ROWS = 64  # batch rows the store keeps (the least recently updated go first)
REORDER_WINDOW = 8  # a step this far below the newest one starts a new generation
MAX_PROBLEMS = 4
# The heatmap and the vision shares (`DashboardState.heat`) show the newest attention
# stats as of the start of the current 1/HEAT_HZ tick of the store clock (so they take new
# values at most HEAT_HZ times a second, at most one tick late). Decode steps arrive
# at 30+/s; redrawing 28x16 cells per step is more than anyone reads and most of what a
# frame sends over SSH/tmux (at 10 Hz the heatmap was still ~half of steady-state bytes).
# Hot heads flash once per tick at the default flash_hz (view.heat_flash_on), so a cell
# that changes value and phase is sent once. It is a function of the arrival times and the
# clock only, so a replay rebuilt from a log shows what the live store showed.
HEAT_HZ = 5.0


class TokenRecord(NamedTuple):
    step: int
    token_id: int
    text: str
    prob: float


class ExplorerStep(NamedTuple):
    """One generation step for the token attention explorer (REPLAY's panel)."""

    step: int
    token_id: int
    text: str
    cache_len: int
    row: np.ndarray  # float32 [K]: newest query's attention over the key slots


class HistoryPoint(NamedTuple):
    """One update's scalars as the TrainingState logged them; NaN where it had none."""

    step: int
    reward_mean: float
    reward_std: float
    kl: float
    loss: float = math.nan
    policy_entropy: float = math.nan
    clip_fraction: float = math.nan
    grad_norm: float = math.nan
    learning_rate: float = math.nan
    tokens_per_sec: float = math.nan
    update_tokens_per_sec: float = math.nan


class Comparison(NamedTuple):
    """A second run's training history shown beside this one's (`--compare`)."""

    label: str  # what the legend calls this run
    other_label: str  # ... and the other one
    history: Tuple[HistoryPoint, ...]


_EMPTY: Mapping = MappingProxyType({})


def _step_of(item) -> int:
    return item.step


def insert_by_step(items: list, item, limit: int) -> None:
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


class StepLog:
    """Items sorted by .step, one per step, the newest `limit` kept (the Store's per-row
    recent tokens and explorer steps), with O(1) read-only views for snapshots.

    A snapshot is taken every frame while items arrive at 30+/s. Copying the log into a
    tuple per frame (up to EXPLORER_STEPS items, each copy touching every item's refcount,
    cold between frames) cost more than the rest of the snapshot. So the backing list is
    only ever appended to: a view (list, start, stop) stays valid for good, and a late or
    duplicate item (rare) or a compaction of the trimmed prefix moves to a new list.
    """

    __slots__ = ("items", "start", "limit")

    def __init__(self, limit: int, items=()):
        self.items = list(items)
        self.start = 0  # items[:start] were trimmed (kept only until the next compaction)
        self.limit = limit

    def __len__(self) -> int:
        return len(self.items) - self.start

    def add(self, item) -> None:
        """Insert by step (a duplicate step replaces: last write wins); keep the newest `limit`."""
        items = self.items
        if len(items) == self.start or items[-1].step < item.step:
            items.append(item)  # the common, in-order case
            if len(items) - self.start > self.limit:
                self.start = len(items) - self.limit
                # Bounded dead prefix (a few % of a copy per append): trimmed items, and
                # the attention rows they hold, do not outlive the snapshots that show them.
                if self.start >= max(16, self.limit // 8):
                    self.items, self.start = items[self.start:], 0
            return
        live = items[self.start:]  # a new list: views handed out keep the old one as it was
        insert_by_step(live, item, self.limit)
        self.items, self.start = live, 0

    def view(self) -> tuple:
        """(list, start, stop): the current items, unchanged by later `add`s."""
        return (self.items, self.start, len(self.items))

    def copy(self) -> "StepLog":
        return StepLog(self.limit, self.items[self.start:])


class FrozenLogs(_MappingABC):
    """Read-only {batch row: tuple of items} over `StepLog.view()`s; a row's tuple is made
    on first read (most frames read one row's recent tokens and no explorer steps)."""

    __slots__ = ("_views", "_made")

    def __init__(self, views: dict):
        self._views = views
        self._made: dict = {}

    def __getitem__(self, key) -> tuple:
        made = self._made.get(key)
        if made is None:
            items, start, stop = self._views[key]
            made = self._made[key] = tuple(items[start:stop])  # memo: the view never changes
        return made

    def get(self, key, default=None):
        return self[key] if key in self._views else default

    def __contains__(self, key) -> bool:
        return key in self._views

    def __iter__(self):
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def __repr__(self) -> str:
        return f"FrozenLogs({dict(self)!r})"


def _empty():
    return dataclasses.field(default_factory=lambda: _EMPTY)

@dataclasses.dataclass(frozen=True, eq=False)
class DashboardState:
    """Everything the panels read; never mutated after `Store.snapshot()` builds it."""

    version: int = 0
    # A token unique to its Store (a plain object: equal only to itself, and held in the
    # layout's keys, so it is never reused while compared): versions of two stores (a
    # replay rebuilds one per seek) never mix in the layout's caches.
    store_id: object = None
    # Per-section versions: panels cache on the sections they read.
    run_v: int = 0
    decode_v: int = 0
    row_v: Mapping[int, int] = _empty()  # per batch row
    batch: int = 1  # rows the user can cycle through with `b` (see batch_size)
    train_v: int = 0
    credit_v: int = 0
    matrix_v: int = 0
    update_v: int = -1  # -1: the snapshot has not taken `updates` yet
    started_at: float = 0.0
    run: Optional[RunInfo] = None
    run_end: Optional[RunEnd] = None  # the run's last record, once it came
    decodes: Mapping[int, DecodeState] = _empty()  # latest DecodeState per batch row
    decode_at: Mapping[int, float] = _empty()  # store-clock time of the row's last decode event
    # Per batch row: smoothed seconds between its decode events (rows with >= 2 events).
    decode_gap: Mapping[int, float] = _empty()
    recent: Mapping[int, Tuple[TokenRecord, ...]] = _empty()
    # Per batch row: {stat name: float32 [L, H]} (NaN where never written).
    stats: Mapping[int, Mapping[str, np.ndarray]] = _empty()
    # What the heatmap shows: the newest `stats` that arrived before the current HEAT_HZ
    # tick began (the newest of all when none did); heat_step: their decode step.
    heat: Mapping[int, Mapping[str, np.ndarray]] = _empty()
    heat_step: Mapping[int, int] = _empty()
    heat_v: Mapping[int, int] = _empty()  # changes whenever a row's `heat` does
    training: Optional[TrainingState] = None
    history: Tuple[HistoryPoint, ...] = ()
    credit: Optional[CreditState] = None
    group: Optional[GroupState] = None  # the newest update's rollout groups (checked by the store)
    group_v: int = 0
    compare: Optional[Comparison] = None  # `--compare`: another run's history for the charts
    matrix: Optional[AttentionMatrix] = None
    plan: Optional[MemoryPlan] = None  # the memory planner's figures for the run (plan view)
    explorer: Mapping[int, Tuple[ExplorerStep, ...]] = _empty()
    # The update taps' UpdateStats, one per PPO update by step (the newest HISTORY).
    updates: Tuple[UpdateStats, ...] = ()
    images: Any = None  # image_data.ImageSnapshot: the image view's (key v) images and attention
    counts: Mapping[str, int] = _empty()  # events seen per kind
    problems: Tuple[str, ...] = ()  # malformed input seen (shown in the footer)
    # Set by the live loop through `with_meta`: "dropped" (int or {kind: n}), "fps",
    # "frame_ms", "error" (str), "source" (str: live / replay / attach).
    meta: Mapping[str, Any] = _empty()

    @classmethod
    def _make(cls, fields: Mapping[str, Any]) -> "DashboardState":
        """A state from a full {field: value} dict (`Store.snapshot`, once per frame): the
        frozen dataclass __init__ sets ~30 fields one object.__setattr__ at a time."""
        out = object.__new__(cls)
        out.__dict__.update(fields)
        return out

    def with_meta(self, meta: Optional[Mapping[str, Any]]) -> "DashboardState":
        if not meta:
            return self
        # A shallow copy with one field swapped: dataclasses.replace would re-run __init__
        # over every field, and this runs once per frame.
        out = object.__new__(DashboardState)
        out.__dict__.update(self.__dict__)
        out.__dict__["meta"] = MappingProxyType(dict(meta))
        return out

    @property
    def dropped(self) -> Optional[int]:
        """Events the bus dropped, as reported by the live loop (None: not reported)."""
        d = self.meta.get("dropped")
        if d is None:
            return None
        if type(d) is int:  # the live loop's usual report; ABC checks cost more than the panel
            return d
        if isinstance(d, Mapping):
            return int(sum(d.values()))
        return int(d)

    def batch_size(self) -> int:
        """Rows the user can cycle through with `b`."""
        return self.batch

    def heat_version(self, batch_index: int) -> int:
        """Changes whenever the row's shown heatmap stats (`heat`) change."""
        return self.heat_v.get(batch_index, -1)

    def row_version(self, batch_index: int) -> int:
        """Changes whenever an event for this batch row arrives (panels cache on it)."""
        return self.row_v.get(batch_index, 0)

    @staticmethod
    def _batch_of(decodes, run) -> int:
        n = max(decodes, default=-1) + 1
        for d in decodes.values():
            n = max(n, int(d.batch_size))
        if run is not None:
            n = max(n, int(run.batch))
        return max(n, 1)

    def decode_for(self, batch_index: int) -> Optional[DecodeState]:
        return self.decodes.get(batch_index)

    def num_layers(self) -> Optional[int]:
        if self.run is not None:
            return int(self.run.num_layers)
        for rows in self.stats.values():
            for arr in rows.values():
                return int(arr.shape[0])
        return None

    def num_heads(self) -> Optional[int]:
        if self.run is not None:
            return int(self.run.num_heads)
        for rows in self.stats.values():
            for arr in rows.values():
                return int(arr.shape[1])
        return None

    def gap_for(self, batch_index: int) -> Optional[float]:
        """Measured seconds between this row's decode events, or None before two arrived."""
        return self.decode_gap.get(batch_index)

    def uptime(self, now: float) -> float:
        return max(0.0, now - self.started_at)


# Every field at its default: `Store.snapshot` starts from a copy and sets what it knows.
DEFAULT_FIELDS = MappingProxyType({
    f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
    for f in dataclasses.fields(DashboardState)
})
