"""One route for diagnostics while the dashboard owns the screen.

A warning printed to stderr in the middle of a frame lands on the alternate screen,
garbles it until the next repaint and is gone when the dashboard leaves. So while the
dashboard draws, `warnings` and `logging` records at WARNING and above are held here: the
footer shows the newest as a notice (with a count), and when the terminal is restored
they are written to stderr, in order, where the user can read and scroll them.
"""
from __future__ import annotations

import collections
import logging
import sys
import threading
import warnings
from typing import Optional

HELD = 100  # lines kept for stderr; older ones are counted, not kept


class Diagnostics:
    """Holds warnings and log records between `capture()` and `release(stream)`."""

    def __init__(self, held: int = HELD):
        self._lines: collections.deque = collections.deque(maxlen=held)  # for stderr
        self._newest = ""  # the newest one, short, for the footer
        self._lock = threading.Lock()
        self.count = 0  # every diagnostic seen while capturing, kept or not
        self._prev_showwarning = None
        self._handler: Optional[logging.Handler] = None

    # ------------------------------------------------------------------ routing
    def capture(self) -> None:
        """Route warnings and root-logger records here (idempotent)."""
        if self._handler is not None:
            return
        self._prev_showwarning = warnings.showwarning
        warnings.showwarning = self._on_warning
        self._handler = _Handler(self)
        logging.getLogger().addHandler(self._handler)

    def release(self, stream=None) -> None:
        """Stop capturing and write what was held to `stream` (default stderr)."""
        if self._handler is None:
            return
        if warnings.showwarning == self._on_warning:
            warnings.showwarning = self._prev_showwarning
        logging.getLogger().removeHandler(self._handler)
        self._handler = None
        with self._lock:
            lines, self._lines = list(self._lines), collections.deque(maxlen=self._lines.maxlen)
            missed = self.count - len(lines)
        if not lines:
            return
        out = sys.stderr if stream is None else stream
        try:
            if missed > 0:
                out.write(f"vlmrl dashboard: {missed} earlier warning(s) not kept\n")
            for line in lines:
                out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):  # stderr closed: nowhere left to report to
            pass

    def add(self, line: str, short: Optional[str] = None) -> None:
        """Hold `line` for stderr; `short` (default: the line) is what the footer shows."""
        with self._lock:
            self.count += 1
            self._lines.append(line)
            self._newest = line if short is None else short

    # ------------------------------------------------------------------ the footer
    def notice(self) -> Optional[str]:
        """`3 warnings · newest: ...` for the footer, or None when none arrived."""
        with self._lock:
            if not self.count:
                return None
            newest, n = self._newest, self.count
        head = "1 warning" if n == 1 else f"{n} warnings"
        return f"{head} (shown on exit): {newest}"

    def _on_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.add(f"{filename}:{lineno}: {category.__name__}: {message}", f"{category.__name__}: {message}")


class _Handler(logging.Handler):
    def __init__(self, sink: Diagnostics):
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.add(f"{record.levelname} {record.name}: {record.getMessage()}")
        except Exception:  # logging's contract: a failing handler reports, never raises
            self.handleError(record)
