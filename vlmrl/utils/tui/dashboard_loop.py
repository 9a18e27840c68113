"""The dashboard's render loop, one named step per stage: wait for a key or the next
frame, apply keys, fold in events, choose the state to show, draw and write.

`LiveTUI` runs it on its render thread and owns everything it touches (terminal,
subscription, render cache, diagnostics); this module only orders the steps.
"""
from __future__ import annotations

import collections
import functools
import time
from typing import List

from vlmrl.utils.tui import theme as _theme
from vlmrl.utils.tui.canvas import Style
from vlmrl.utils.tui.frame import FrameEncoder
from vlmrl.utils.tui.layout import render_screen
from vlmrl.utils.tui.render_cache import RenderCache
from vlmrl.utils.tui.replay import FRAME_BUDGET
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.term import RESET_HINT
from vlmrl.utils.tui.view import MODE_KEYS, SHARED_KEY_MODES, ViewState, handle_key

HINT_SECONDS = 5.0  # the `reset` hint is guaranteed on screen this long after start
REPAINT_EVERY = 10.0  # seconds between full redraws (no clear) that heal stray output


class DashboardLoop:
    """The state one dashboard carries from frame to frame, and the steps of a frame."""

    def __init__(self, tui):
        self.tui = tui
        self.term, self.sub, self.replay = tui.term, tui._sub, tui.replay
        self.cache = tui.render_cache = RenderCache()  # what the panels keep between frames
        self.screen = tui.screen or functools.partial(render_screen, cache=self.cache)
        # Nothing shape-specific is drawn before the run's own RunInfo arrives: a guessed
        # shape (the constructor's defaults are the 2B model's) would show a wrong KV size.
        self.make_store = functools.partial(Store, compare=tui.compare)  # the same for every replay seek
        self.store = self.make_store()
        self.view = ViewState(flash_hz=tui.flash_hz, display_layers=tui.display_layers)
        self.enc = FrameEncoder(tui.depth)
        self.theme = _theme.palette_for_depth(tui.depth)
        self.interval = 1.0 / tui.fps
        self.t_start = time.monotonic()
        self.frame_times: collections.deque = collections.deque(maxlen=64)
        # the source may be a callable (--attach adds the bad lines it skipped)
        self.source = tui.source if callable(tui.source) else (lambda: tui.source)
        self.meta = {"fps": None, "source": self.source(), "dropped": 0}
        self.frozen = None  # the state shown while paused
        self.frozen_status = None  # and the header's status of that moment ("N of M updates done")
        self.size = None  # (width, height, terminal generation) of the last frame
        self.next_frame = self.last_repaint = time.monotonic()

    def run(self, stop) -> bool:
        """Draw until `stop` is set; True when the user pressed q."""
        tui = self.tui
        cpu0 = time.thread_time()
        while not stop.is_set():
            keys = self.wait_for_input(stop)
            c0 = time.thread_time()
            if stop.is_set():
                break
            if self.apply_keys(keys):
                return True
            now = time.monotonic()
            if not keys and now < self.next_frame:
                continue
            self.next_frame = max(self.next_frame + self.interval, now)
            self.fold_events(now)
            self.draw(self.state_to_show(now), now)
            tui.frames += 1
            tui.cpu_s = time.thread_time() - cpu0
            dt_ms = (time.thread_time() - c0) * 1000.0
            tui.frame_ms = 0.9 * tui.frame_ms + 0.1 * dt_ms if tui.frames > 1 else dt_ms
        return False

    # ------------------------------------------------------------------ steps
    def wait_for_input(self, stop) -> List[str]:
        """Keys pressed before the next frame is due ([] when none)."""
        keys = self.term.read_keys(max(0.0, self.next_frame - time.monotonic()))
        if keys is None:  # no keyboard: sleep by the stop event instead
            stop.wait(max(0.0, self.next_frame - time.monotonic()))
            keys = []
        return keys

    def apply_keys(self, keys: List[str]) -> bool:
        """Apply keys to the view (or the replay); True on q."""
        for key in keys:
            if key == "q":
                return True
            if key == "KEY_REDRAW":  # Ctrl-L, as in every terminal program
                self.enc.invalidate()
                continue
            # replay's keys step the run under the dashboard, the RL views and the image view
            # (their own keys are [ ] s a o n ↑ ↓; g opens the group view rather than going Home)
            if (self.replay is not None and self.view.mode in SHARED_KEY_MODES and key not in MODE_KEYS
                    and self.replay.handle_key(key)):
                continue
            self.view = handle_key(self.view, key, self.frozen or self.store.snapshot(), self.cache)
        return False

    def fold_events(self, now: float) -> None:
        """Fold what arrived into the store (the live store keeps consuming while paused),
        or move the replay on, and refresh the loop's own figures."""
        replay, meta = self.replay, self.meta
        for ev in self.sub.drain():
            if replay is None:
                self.store.apply(ev)
        meta["source"] = self.source()
        if replay is not None:
            replay.load()  # a slice of a log still being read, so the screen is up and q answers
            replay.tick(now)
            self.store = replay.store_at(self.make_store, budget=FRAME_BUDGET)
            meta["source"] = replay.status()
            self.view = self.view.replace(replay_pos=replay.position)
        meta["dropped"] = self.sub.total_dropped
        meta["notice"] = self.tui.diagnostics.notice()
        meta["status"] = self.tui.status
        times = self.frame_times
        times.append(now)
        if len(times) > 1 and int(now * 2) != int(times[-2] * 2):  # twice a second
            span = times[-1] - times[0]
            meta["fps"] = round((len(times) - 1) / span, 1) if span > 0 else None
            meta["frame_ms"] = round(self.tui.frame_ms, 2)

    def state_to_show(self, now: float):
        """The snapshot to draw: the frozen one while paused, with the loop's figures. The
        run's status line freezes with it, so "N of M updates done" keeps to the frozen step."""
        state = self.store.snapshot()
        meta = self.meta
        if self.view.paused:
            if self.frozen is None:
                self.frozen, self.frozen_status = state, meta.get("status")
            state = self.frozen
            meta = dict(meta, status=self.frozen_status)
        else:
            self.frozen = None
        return state.with_meta(meta)

    def draw(self, state, now: float) -> None:
        """Render, diff against the last frame and write it in one write."""
        enc, term = self.enc, self.term
        if now - self.last_repaint >= REPAINT_EVERY:  # heal stray output (a library printing)
            self.last_repaint = now
            enc.repaint()
        w, h = term.size()
        if (w, h, term.generation) != self.size:  # resized, or back from Ctrl-Z
            self.size = (w, h, term.generation)
            enc.invalidate()
        time.sleep(0)  # yield the GIL between stages: a waiting producer goes first
        canvas = self.screen(state, self.view, w, h, now, self.theme)
        if now - self.t_start < HINT_SECONDS:
            canvas = with_reset_hint(canvas)
        time.sleep(0)
        term.write(enc.encode(canvas))  # os.write releases the GIL by itself


def with_reset_hint(canvas):
    """SIGKILL cannot be caught: the first frames must name `reset` as the cure. The
    layout's footer does when it has room; otherwise a copy gets it (the layout caches
    its screens, so they are never written to)."""
    if canvas.height < 1 or canvas.width < 10:
        return canvas
    if any("reset" in canvas.row_text(y) for y in range(canvas.height - 1, max(-1, canvas.height - 3), -1)):
        return canvas
    canvas = canvas.copy()
    hint = " " + RESET_HINT + " "
    canvas.put(max(0, canvas.width - len(hint)), canvas.height - 1, hint, Style(reverse=True))
    return canvas


