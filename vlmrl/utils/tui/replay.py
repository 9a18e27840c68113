"""Watching a recorded run: follow a growing log (`--attach`) or step through a finished one (`--replay`).

Both read the event log written by `vlmrl.instrument.record.Recorder`; neither imports
JAX, so a laptop can watch a run recorded on a GPU node (e.g. over sshfs or after rsync).
"""
from __future__ import annotations

import copy
import os
import time
from typing import Callable, Iterator, List, Optional

from vlmrl.instrument.events import DecodeState, Event, RunInfo, TrainingState
from vlmrl.instrument.record import (HEADER_PREFIX, LINE_MAX, LogFormatError, ReadStats, open_log, parse_header,
                                     parse_line, read_log)

# One poll reads at most this much, so a huge file is taken over several polls and the
# caller can still honour its stop condition (--seconds, q) in between.
POLL_BYTES = 64 << 20

# ------------------------------------------------------------------ attach


class LogFollower:
    """Incremental reader of a log that another process is still writing (tail -f).

    `poll()` returns the events completed since the last call. A line is taken only once
    its newline has arrived, so a batch half-written when we read it is picked up whole on
    a later poll. A file that shrinks (the run restarted and rewrote it) is read again
    from the top. A line longer than LINE_MAX (one never ended, too) is skipped and counted
    without being held; a path that is not a readable regular file raises LogFormatError.
    """

    def __init__(self, path: str, chunk: int = 1 << 20):
        self.path = path
        self.header: Optional[dict] = None
        self.stats = ReadStats()
        self._chunk = chunk
        self._fh = None
        self._pos = 0
        self._buf = bytearray()
        self._lineno = 0
        self._skipping = False  # inside a line longer than LINE_MAX: drop bytes up to its newline

    def _open(self) -> bool:
        if self._fh is None:
            try:
                self._fh = open_log(self.path)
            except FileNotFoundError:
                return False
            self._pos, self._buf, self._lineno, self.header = 0, bytearray(), 0, None
            self._skipping = False
        return True

    def poll(self) -> List[Event]:
        """New complete events (the header's RunInfo first, once); [] when nothing new.

        Reads until the end of the file or until a chunk completed at least one line, so
        a huge line (a large AttentionMatrix) is taken in one poll, not one chunk per poll.
        """
        if not self._open():
            return []
        try:
            size = os.fstat(self._fh.fileno()).st_size
        except OSError:
            size = self._pos
        if size < self._pos:  # truncated or replaced: start over
            self._fh.close()
            self._fh = None
            if not self._open():
                return []
        out: List[Event] = []
        self._fh.seek(self._pos)
        budget = POLL_BYTES
        while not out and budget > 0:
            try:
                data = self._fh.read(self._chunk)
            except OSError as exc:
                raise LogFormatError(f"{self.path}: {exc.strerror or exc}") from None
            if not data:
                break
            self._pos += len(data)
            budget -= len(data)
            if self._skipping:
                nl = data.find(b"\n")
                if nl < 0:
                    continue
                data, self._skipping = data[nl + 1:], False
            scan_from = len(self._buf)
            self._buf += data  # bytearray: appending a chunk does not copy what is there
            if self._buf.find(b"\n", scan_from) >= 0:
                *lines, rest = bytes(self._buf).split(b"\n")
                self._buf = bytearray(rest)
                for line in lines:
                    self._take(line, out)
            self._check_first_line()
            if len(self._buf) > LINE_MAX:
                self._too_long()
        return out

    def _too_long(self) -> None:
        self._lineno += 1
        if self.header is None:
            raise LogFormatError(f"{self.path}: first line longer than {LINE_MAX} bytes, not a vlmrl event log")
        self.stats.note_garbage(self._lineno, f"line longer than {LINE_MAX} bytes")
        self._buf, self._skipping = bytearray(), True

    def _take(self, line: bytes, out: List[Event]) -> None:
        self._lineno += 1
        if self.header is None:
            if len(line) > LINE_MAX:
                raise LogFormatError(f"{self.path}: first line longer than {LINE_MAX} bytes, not a vlmrl event log")
            self.header = parse_header(line, self.path)
            if self.header.get("bad_run_info"):
                self.stats.note_garbage(self._lineno, self.header["bad_run_info"])
            if self.header.get("run_info") is not None:
                out.append(self.header["run_info"])
            return
        ev = parse_line(line, self._lineno, self.stats)
        if ev is not None:
            out.append(ev)

    def _check_first_line(self) -> None:
        buf = bytes(self._buf[:len(HEADER_PREFIX)])
        if self.header is None and buf and not HEADER_PREFIX.startswith(buf):
            # The writer starts every log with this exact prefix: anything else is not a
            # log, and there is no need to wait for a newline that may never come.
            parse_header(bytes(self._buf[:4096]), self.path)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _stopped(stop) -> bool:
    if stop is None:
        return False
    if callable(stop) and not hasattr(stop, "is_set"):
        return bool(stop())
    return stop.is_set()


def attach_events(path: str, stop=None, poll: float = 0.1, follower: Optional[LogFollower] = None) -> Iterator[Event]:
    """Yield the events of a growing log as they are written, until `stop` is set.

    `stop` is a threading.Event (or a callable returning True to stop). Waits for the file
    to appear. Raises LogFormatError when its first line is not a vlmrl log header or the
    path is not a readable regular file. `follower`: a LogFollower of `path` to read with
    (its `stats` count the bad lines), else a new one.
    """
    follower = follower if follower is not None else LogFollower(path)
    try:
        while not _stopped(stop):
            events = follower.poll()
            yield from events
            if not events:
                if stop is not None and hasattr(stop, "wait"):
                    stop.wait(poll)
                else:
                    time.sleep(poll)
    finally:
        follower.close()


# ------------------------------------------------------------------ replay

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
        if any(isinstance(ev, RunInfo) for ev in events):
            run_info = None  # the run published its own; applying the header's too adds nothing
        self.events: List[Event] = ([run_info] if run_info is not None else []) + list(events)
        lead = 1 if run_info is not None else 0
        stops = [lead] + [i + 1 for i, ev in enumerate(self.events) if _is_step_event(ev)]
        if stops[-1] != len(self.events):
            stops.append(len(self.events))
        self.stops = sorted(set(stops))
        self.index = len(self.stops) - 1  # open at the end: the final screen of the run
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
        header, events, stats = read_log(path)
        return cls(events, header, stats, path)

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
        if self.catching_up:
            extra += f"  reading {100 * self._store_pos // max(len(self.events), 1)}%"
        return f"REPLAY {self.index}/{self.num_steps} {state} {speed}  {what}{extra}"


__all__ = ["LogFollower", "attach_events", "ReplayLog", "LogFormatError", "SPEEDS"]
