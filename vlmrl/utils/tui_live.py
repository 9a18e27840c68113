"""LiveTUI: watch a Qwen3-VL RL run live in the terminal, at no cost to the run.

Producers (taps, the trainer, model code) only publish events to a bounded bus, which
never blocks. One background thread drains its subscription about `fps` times a second,
folds the events into the store (`store.py`), renders the layout into a cell grid, diffs it
against the last frame and writes the change in one write (`frame.py`, `term.py`).
When stdout is not a terminal nothing is drawn: `plainlog.py` prints plain lines. If the
render thread fails, the terminal is restored, the failure is reported once on stderr,
the plain log takes over and the run goes on. No JAX is imported here.

`python -m vlmrl.utils.tui_live` is the demo and the viewer of recorded runs (`--help`).
"""
from __future__ import annotations

import atexit
import sys
import threading
import traceback
from typing import Any, Callable, Optional

from vlmrl.errors import UsageError
from vlmrl.instrument.bus import Bus, default_bus
from vlmrl.instrument.events import CreditState, DecodeState, Event, TrainingState, decode_event
from vlmrl.utils.tui import theme as _theme
from vlmrl.utils.tui.diagnostics import Diagnostics
from vlmrl.utils.tui.plainlog import FdWriter, PlainLog
from vlmrl.utils.tui.term import Terminal



class EventQueue:
    """`LiveTUI.queue`: model code may `put((kind, payload))` or `put(event)`; never blocks."""

    def __init__(self, publish: Callable[[Event], None]):
        self._publish = publish

    def put(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        self._publish(to_event(item))

    put_nowait = put


def to_event(item: Any) -> Event:
    """An Event from an event, `(kind, event)`, `(kind, dict)` or `("credit", (tokens, credits))`."""
    if isinstance(item, Event):
        return item
    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
        raise UsageError(f"LiveTUI.queue: expected an event or (kind, payload), got {type(item).__name__}")
    kind, payload = item
    if isinstance(payload, Event):
        if payload.kind != kind:
            raise UsageError(f"LiveTUI.queue: kind {kind!r} does not match payload kind {payload.kind!r}")
        return payload
    if isinstance(payload, dict):
        return decode_event({**payload, "kind": kind})
    if kind == "credit" and isinstance(payload, (tuple, list)) and len(payload) == 2:
        return decode_event({"kind": "credit", "tokens": list(payload[0]), "credits": [float(c) for c in payload[1]]})
    raise UsageError(f"LiveTUI.queue: cannot make a {kind!r} event from {type(payload).__name__}")


class LiveTUI:
    """The live dashboard. Start it, publish events, stop it (or use it as a context manager).

    Args:
      num_layers, num_heads, max_cache: the shape the caller expects (the documented API);
        nothing shape-specific is drawn until the run's own RunInfo arrives.
      display_layers: heatmap rows per page. flash_hz: flashing indicators' rate.
      bus: the event bus to watch (default: the process-wide bus the taps publish to).
      fps: frames per second at most. out_fd/in_fd: terminal fds (default stdout/stdin).
      screen: `(state, view, w, h, now, theme) -> Canvas` (default: the panel layout).
      replay: a `replay.ReplayLog` to show instead of the live bus (``--replay``).
      source: what the footer calls the data ("LIVE", "SYNTHETIC", "ATTACH"), or a callable
        giving it each frame (--attach adds the bad lines it skipped).
      plain_stream: where plain lines go when there is no terminal (default stdout).
      process_index: this process's index in a multi-host run; only 0 draws.
      quit_ends: `q` ends the viewer (--attach) rather than leaving the run to the plain log.
      compare: a `state.Comparison` (another run's training history) the charts overlay.
    """

    def __init__(self, num_layers: int = 28, num_heads: int = 16, display_layers: int = 6,
                 flash_hz: float = 5.0, max_cache: int = 2048, bus: Optional[Bus] = None, fps: float = 20,
                 out_fd: Optional[int] = None, in_fd: Optional[int] = None, screen: Optional[Callable] = None,
                 replay=None, source: str = "LIVE", plain_stream=None, summary_every: float = 10.0,
                 depth: Optional[str] = None, process_index: int = 0, quit_ends: bool = False,
                 compare=None):
        if fps <= 0:
            raise UsageError(f"fps must be > 0, got {fps}")
        # Only process 0 of a multi-host run draws or logs (the caller knows its index;
        # this module cannot ask JAX): elsewhere start() does nothing.
        self.process_index = int(process_index)
        self.num_layers, self.num_heads, self.max_cache = num_layers, num_heads, max_cache
        self.display_layers, self.flash_hz, self.fps = display_layers, flash_hz, float(fps)
        self.bus = bus if bus is not None else default_bus()
        self.queue = EventQueue(self.bus.publish)
        self.term = Terminal(out_fd=out_fd, in_fd=in_fd)
        self.screen = screen  # None: the panel layout, drawn with self.render_cache
        self.render_cache = None  # the RenderCache of the running dashboard
        self.replay = replay
        self.compare = compare
        self.source = source
        self.depth = depth or _theme.detect_color_depth()
        if plain_stream is None and out_fd is not None:
            plain_stream = FdWriter(out_fd)  # after `q` the log goes where the dashboard was
        self.plain = PlainLog(plain_stream, summary_every=summary_every)
        self.error: Optional[str] = None
        # warnings and log records while the dashboard owns the screen: a footer notice,
        # then stderr once the terminal is restored
        self.diagnostics = Diagnostics()
        self.plain_failures = 0  # plain logs that died (reported on stderr at once)
        self.mode = "off"  # off | dashboard | plain
        self.frames = 0
        self.cpu_s = 0.0  # render thread CPU time (time.thread_time)
        self.frame_ms = 0.0
        self._sub = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._reported = False
        self.quit = False  # the user pressed q
        # The header's status while the run reports none of its own ("waiting for FILE").
        self.status = ""
        # q ends the viewer (attach: no run here goes on) instead of handing over to the plain log
        self.quit_ends = quit_ends

    # ------------------------------------------------------------- producer side
    def update_decode(self, state: DecodeState) -> None:
        self.bus.publish(state)

    def update_training(self, state: TrainingState) -> None:
        self.bus.publish(state)

    def update_credit(self, tokens, credits, step: int = 0) -> None:
        self.bus.publish(CreditState(tokens=list(tokens), credits=[float(c) for c in credits], step=step))

    def publish(self, event: Event) -> None:
        self.bus.publish(event)

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "LiveTUI":
        with self._lock:
            if self._thread is not None or self.process_index != 0:
                return self
            self._stop.clear()
            self._sub = self.bus.subscribe("tui")
            if self.term.is_tty():
                self.mode = "dashboard"
                self.term.enter()
                self.diagnostics.capture()
                self.term.install_signal_handlers(self._on_signal)
                target = self._dashboard_thread
            else:
                self.mode = "plain"
                target = self._plain_thread
            atexit.register(self.stop)
            if self.mode == "dashboard":
                self._hook_excepthook()
            self._thread = threading.Thread(target=target, name="vlmrl-tui", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop drawing, restore the terminal and report a render failure (once)."""
        with self._lock:
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.term.restore()
        self.diagnostics.release()
        self.term.uninstall_signal_handlers()
        if self._sub is not None:
            self.bus.unsubscribe(self._sub)
        self._report_error()
        if getattr(sys.excepthook, "__self__", None) is self:
            sys.excepthook = self._prev_excepthook
        atexit.unregister(self.stop)

    def _hook_excepthook(self) -> None:
        # An uncaught exception prints its traceback before atexit runs: restore first so
        # the traceback lands on the normal screen, not in the alternate one.
        self._prev_excepthook = sys.excepthook
        sys.excepthook = self._excepthook

    def _excepthook(self, tp, value, tb) -> None:
        self.stop()
        self._prev_excepthook(tp, value, tb)

    def __enter__(self) -> "LiveTUI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the dashboard thread ends (e.g. `q` in replay); True if it ended."""
        t = self._thread
        if t is None:
            return True
        t.join(timeout)
        return not t.is_alive()

    def _on_signal(self, signum: int) -> None:
        self._stop.set()  # the terminal is already restored; the thread just ends

    def _report_error(self) -> None:
        if self.error and not self._reported:
            self._reported = True
            try:
                tb = getattr(self, "_traceback", "")
                sys.stderr.write(f"vlmrl dashboard stopped after an error (the run goes on): {self.error}\n"
                                 + (tb + "\n" if tb else ""))
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    # ------------------------------------------------------------- threads
    def _plain_thread(self) -> None:
        try:
            self.plain.run(self._sub, self._stop)
        except Exception:  # a broken log must never end the run, but it must say it stopped
            self._plain_died()

    def _plain_died(self) -> None:
        self.plain_failures += 1
        why = traceback.format_exc(limit=3).strip().splitlines()[-1]
        self.error = self.error or f"plain log: {why}"
        self._reported = True  # said here, at once; stop() need not repeat it
        try:
            sys.stderr.write(f"vlmrl plain log stopped after an error (the run goes on): {why}\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed too: the counter and self.error are all that is left
            pass

    def _dashboard_thread(self) -> None:
        quit_ = False
        try:
            quit_ = self.quit = self._dashboard_loop()
        except BaseException:
            tb = traceback.format_exc(limit=4).strip()
            self.error = tb.splitlines()[-1] if tb else "unknown error"
            self._traceback = tb
        finally:
            self.term.restore()
            self.diagnostics.release()  # what was held for the footer goes to stderr now
        self._report_error()
        if self.replay is not None or self.quit_ends or self._stop.is_set():
            return
        # `q` or a failure: the run goes on, so the plain log takes over from here
        self.mode = "plain"
        self.plain.summary_every = min(self.plain.summary_every, 10.0)
        try:
            why = "dashboard closed (q)" if quit_ else "dashboard failed"
            self.plain.stream.write(f"{why}; plain log follows, the run goes on\n")
            self.plain.run(self._sub, self._stop)
        except Exception:  # a broken log must never end the run: counted, said once on stderr
            self._plain_died()

    def _dashboard_loop(self) -> bool:
        """Draw until stopped; True when the user pressed q (the steps: dashboard_loop.py)."""
        from vlmrl.utils.tui.dashboard_loop import DashboardLoop  # plain-log runs never need the panels

        return DashboardLoop(self).run(self._stop)


def main(argv=None) -> int:
    """`python -m vlmrl.utils.tui_live` (see `vlmrl.utils.tui.cli`, which gets LiveTUI from here)."""
    from vlmrl.utils.tui.cli import main as cli_main

    return cli_main(argv, LiveTUI)


if __name__ == "__main__":
    sys.exit(main())
