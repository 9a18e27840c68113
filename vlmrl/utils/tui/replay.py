"""Stepping through a finished recorded run (`--replay`): a cursor over its steps and the store at it.

Reads the event log written by `vlmrl.instrument.record.Recorder` (a growing one is
followed by attach.py); no JAX here, so a laptop can replay a run recorded on a GPU node.
"""
from __future__ import annotations

import copy
from typing import Callable, List, Optional

from vlmrl.instrument.events import DecodeState, Event, RunInfo, TrainingState
from vlmrl.instrument.log_read import LogFormatError, LogReader, ReadStats, read_log

SPEEDS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# During playback a pause in the recording longer than this (at 1x) is shortened to it:
# hours of a run between two rollouts should not mean minutes of an empty replay.
MAX_GAP_S = 1.0
# The store is saved every this many events so stepping back costs at most this many applies;
# past MAX_CHECKPOINTS saved copies every other one is dropped and the spacing doubles, so a
# long log keeps a bounded number of copies (memory) at a bounded cost per step back.
CHECKPOINT_EVERY = 2000
MAX_CHECKPOINTS = 32
# Events a dashboard frame applies at most while a replay catches up, so q and the arrows
# answer on a log of any length: the worst 10,000 took 3.0 s on a loaded 2-core VM (200,000
# events each on a new batch row), so about 0.6 s a frame at this budget.
FRAME_BUDGET = 2_000
# Seconds of reading a dashboard frame spends on a log still being loaded (`ReplayLog.stream`):
# the screen opens at once and q answers while a long log is read (200,000 events took
# ~100 s to read whole on a 2-core VM before the first frame when read up front).
LOAD_SECONDS = 0.04


def _clone(store):
    """An independent copy of a store, or None when it cannot be copied (then no checkpoints).

    Frozen dataclasses inside it (snapshots) are immutable, so copies share them; that also
    avoids deep-copying the read-only mapping proxies they hold.
    """
    if hasattr(store, "copy") and callable(store.copy):
        return store.copy()
    memo = {}
    for value in vars(store).values():
        params = getattr(value, "__dataclass_params__", None)
        if params is not None and params.frozen:
            memo[id(value)] = value
    try:
        return copy.deepcopy(store, memo)
    except (TypeError, copy.Error, RecursionError):
        return None


def _is_step_event(ev: Event) -> bool:
    return isinstance(ev, (DecodeState, TrainingState))


class ReplayLog:
    """A finished log with a cursor: `position` events of it have been applied.

    The stops for ← → are the ends of steps: the position just after each DecodeState or
    TrainingState (other events, e.g. the AttentionMatrix of a prefill, ride along with the
    step they precede). Position 0 is before any step; the last stop is the end of the log.
    """

    def __init__(self, events: List[Event], header: Optional[dict] = None, stats: Optional[ReadStats] = None,
                 path: str = ""):
        self.header = header or {}
        self.stats = stats or ReadStats(events=len(events))
        self.path = path
        run_info = self.header.get("run_info")
        self.events: List[Event] = [run_info] if run_info is not None else []
        self._step_ends = [1 if run_info is not None else 0]
        self.stops: List[int] = []
        self.reader: Optional[LogReader] = None  # set by stream(): the rest of the log still to read
        self._follow = True  # the cursor stays on the newest step while the log loads
        self._extend(events)
        self.playing = False
        self.speed = 1.0
        self._next_due: Optional[float] = None
        self._checkpoints: dict = {}
        self._every = CHECKPOINT_EVERY
        self.catching_up = False  # the last store_at ran out of budget short of its position
        self._store = None
        self._store_pos = 0
        self._make_store: Optional[Callable] = None

    @classmethod
    def open(cls, path: str) -> "ReplayLog":
        """The whole log, read before returning."""
        header, events, stats = read_log(path)
        return cls(events, header, stats, path)

    @classmethod
    def stream(cls, path: str) -> "ReplayLog":
        """The log's header now (LogFormatError at once); its events as `load()` reads them."""
        reader = LogReader(path)
        log = cls([], reader.header, reader.stats, path)
        log.reader = reader
        return log

    @property
    def loading(self) -> bool:
        return self.reader is not None

    def load(self, seconds: Optional[float] = LOAD_SECONDS) -> None:
        """Read the next part of a streamed log (all of it with seconds=None)."""
        if self.reader is None:
            return
        self._extend(self.reader.read(seconds))
        if self.reader.done:
            self.reader = None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def _extend(self, events: List[Event]) -> None:
        if events and isinstance(events[0], RunInfo) and self._step_ends == [1] == [len(self.events)]:
            # the run's own RunInfo opens the log: the header's copy of it adds nothing
            self.events, self._step_ends = [], [0]
        base = len(self.events)
        self.events.extend(events)
        self._step_ends.extend(base + i + 1 for i, ev in enumerate(events) if _is_step_event(ev))
        end = [] if self._step_ends[-1] == len(self.events) else [len(self.events)]
        self.stops = self._step_ends + end
        if self._follow:
            self.index = len(self.stops) - 1  # open at the end: the final screen of the run

    # -- cursor ---------------------------------------------------------------
    @property
    def position(self) -> int:
        return self.stops[self.index]

    @property
    def num_steps(self) -> int:
        return len(self.stops) - 1

    def seek(self, index: int) -> None:
        self.index = max(0, min(int(index), len(self.stops) - 1))
        self._next_due = None

    def step(self, delta: int) -> None:
        self.seek(self.index + delta)

    def events_until(self, position: Optional[int] = None) -> List[Event]:
        """The events a fresh store applies to show the screen at `position`."""
        return self.events[: self.position if position is None else position]

    def current_event(self) -> Optional[Event]:
        pos = self.position
        return self.events[pos - 1] if pos > 0 else None

    # -- keys and playback ----------------------------------------------------
    def handle_key(self, key: str) -> bool:
        """Apply a navigation key; True when it was one (the caller then skips it)."""
        moved = self._navigate(key)
        if moved:  # while loading, End (or stepping onto the newest step) follows the log again
            self._follow = self.index == len(self.stops) - 1 and not self.playing
        return moved

    def _navigate(self, key: str) -> bool:
        if key in ("KEY_RIGHT", "right", "l"):
            self.playing = False
            self.step(1)
        elif key in ("KEY_LEFT", "left", "h"):
            self.playing = False
            self.step(-1)
        elif key in ("KEY_HOME", "home"):  # not g: it opens the group view
            self.playing = False
            self.seek(0)
        elif key in ("KEY_END", "end", "G"):
            self.playing = False
            self.seek(len(self.stops) - 1)
        elif key in (" ", "space"):
            self.playing = not self.playing
            if self.playing and self.index == len(self.stops) - 1:
                self.seek(0)  # play from the top when at the end, as players do
            self._next_due = None
        elif key in ("+", "="):
            self.speed = SPEEDS[min(SPEEDS.index(self.speed) + 1, len(SPEEDS) - 1)]
        elif key in ("-", "_"):
            self.speed = SPEEDS[max(SPEEDS.index(self.speed) - 1, 0)]
        else:
            return False
        return True

    def _gap(self, index: int) -> float:
        """Seconds (at 1x) between the stop at `index` and the next, from recorded wall times."""
        a = self.events[self.stops[index] - 1] if self.stops[index] > 0 else None
        b = self.events[self.stops[index + 1] - 1]
        ta, tb = getattr(a, "wall_time", None), getattr(b, "wall_time", None)
        if not isinstance(ta, (int, float)) or not isinstance(tb, (int, float)):
            return 0.05
        return min(max(tb - ta, 0.0), MAX_GAP_S)

    def tick(self, now: float) -> bool:
        """Advance playback to wall-clock `now`; True when the position changed."""
        if not self.playing:
            return False
        if self.index >= len(self.stops) - 1:
            self.playing = False
            return False
        if self._next_due is None:
            self._next_due = now + self._gap(self.index) / self.speed
        moved = False
        while self.playing and now >= self._next_due:
            self.index += 1
            moved = True
            if self.index >= len(self.stops) - 1:
                self.playing = False
                break
            self._next_due += self._gap(self.index) / self.speed
        return moved

    # -- store ----------------------------------------------------------------
    def store_at(self, make_store: Callable, position: Optional[int] = None, budget: Optional[int] = None):
        """A store holding exactly the events before `position` (default: the cursor).

        Stepping forward applies only the new events; stepping back restarts from the
        nearest saved copy, so navigation cost does not grow with the log. With `budget`,
        at most that many events are applied per call (the dashboard's frames, so keys
        such as q are read while a long log is caught up); `catching_up` says whether the
        store is short of `position`.
        """
        pos = self.position if position is None else position
        if self._make_store is not make_store:
            self._make_store, self._store, self._store_pos, self._checkpoints = make_store, None, 0, {}
            self._every = CHECKPOINT_EVERY
        if self._store is None or pos < self._store_pos:
            base = max((p for p in self._checkpoints if p <= pos), default=None)
            if base is None:
                self._store, self._store_pos = make_store(), 0
            else:
                self._store, self._store_pos = _clone(self._checkpoints[base]), base
        left = budget
        while self._store_pos < pos and (left is None or left > 0):
            every = self._every
            end = min(pos, (self._store_pos // every + 1) * every)
            if left is not None:
                end = min(end, self._store_pos + left)
                left -= end - self._store_pos
            for ev in self.events[self._store_pos:end]:
                self._store.apply(ev)
            self._store_pos = end
            if end % every == 0 and end not in self._checkpoints:
                saved = _clone(self._store)
                if saved is not None:
                    self._checkpoints[end] = saved
                    self._thin_checkpoints()
        self.catching_up = self._store_pos < pos
        return self._store

    def _thin_checkpoints(self) -> None:
        while len(self._checkpoints) > MAX_CHECKPOINTS:
            self._every *= 2
            self._checkpoints = {p: c for p, c in self._checkpoints.items() if p % self._every == 0}

    def status(self) -> str:
        """One footer line: where the cursor is and how playback runs."""
        state = "▶" if self.playing else "⏸"
        speed = f"{self.speed:g}x"
        ev = self.current_event()
        what = f"{ev.kind} step {getattr(ev, 'step', '?')}" if ev is not None else "start"
        skipped = self.stats.garbage + self.stats.truncated
        extra = f"  {skipped} bad lines skipped" if skipped else ""
        if self.reader is not None:
            extra += f"  loading {int(100 * self.reader.progress())}% of the log"
        elif self.catching_up:
            extra += f"  reading {100 * self._store_pos // max(len(self.events), 1)}%"
        return f"REPLAY {self.index}/{self.num_steps} {state} {speed}  {what}{extra}"


__all__ = ["ReplayLog", "LogFormatError", "SPEEDS"]
