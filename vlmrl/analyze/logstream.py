"""Read a recorded event log one line at a time, with a line-length cap and a progress bar.

Memory stays bounded by the longest accepted line, whatever the size of the file: a log
of a long run can be far larger than the RAM of the laptop reading it. Lines are decoded
by the recorder's own decoder (`vlmrl.instrument.record`), so the report reads exactly
what `--attach` and `--replay` read.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterator, Optional, TextIO

from vlmrl.instrument.record import LogFormatError, ReadStats, parse_header, parse_line

# Longest line accepted. The largest event the taps write is a prefill attention matrix,
# at most 4096 x 4096 float16 = 32 MiB, 43 MiB as base64; longer lines are skipped and
# counted without being held in memory.
MAX_LINE = 64 << 20
_SKIP_CHUNK = 1 << 20


class Progress:
    """A one-line progress bar on a terminal's stderr (nothing when stderr is not a TTY)."""

    def __init__(self, total: int, stream: Optional[TextIO] = None, enabled: Optional[bool] = None,
                 interval: float = 0.2):
        self.stream = stream if stream is not None else sys.stderr
        self.total = max(total, 1)
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self.t0 = time.monotonic()
        self._last = 0.0
        self.drawn = False

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < self.interval:
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        bar = "#" * int(frac * 30)
        self.stream.write(f"\ranalyze [{bar:<30}] {frac:4.0%} {done / 1e6:,.0f}/{self.total / 1e6:,.0f} MB "
                          f"{rate / 1e6:,.1f} MB/s eta {eta:4.0f}s ")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


class LogStream:
    """Iterate (event, line bytes) over a log; `header`, `stats` and `bytes_read` as it goes.

    Raises LogFormatError (a one-line message) when the file is not a vlmrl log, OSError
    when it cannot be read.
    """

    def __init__(self, path: str, progress: Optional[Progress] = None, max_line: int = MAX_LINE):
        self.path = path
        self.max_line = max_line
        self.size = os.path.getsize(path)
        self.stats = ReadStats()
        self.bytes_read = 0
        self.lines = 0
        self.garbage_bytes = 0
        self.progress = progress
        self._fh = open(path, "rb")
        try:
            first = self._fh.readline(max_line + 1)
            if not first.strip():
                raise LogFormatError(f"{path}: empty file, not a vlmrl event log")
            if len(first) > max_line:
                raise LogFormatError(f"{path}: not a vlmrl event log (first line longer than {max_line} bytes)")
            self.header = parse_header(first, path)
        except BaseException:
            self._fh.close()
            raise
        self.bytes_read = len(first)
        self.lines = 1

    def _skip_rest_of_line(self) -> int:
        skipped = 0
        while True:
            chunk = self._fh.readline(_SKIP_CHUNK)
            skipped += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                return skipped

    def __iter__(self) -> Iterator[tuple]:
        try:
            while True:
                line = self._fh.readline(self.max_line + 1)
                if not line:
                    return
                self.lines += 1
                self.bytes_read += len(line)
                if self.progress is not None:
                    self.progress.update(self.bytes_read)
                if len(line) > self.max_line and not line.endswith(b"\n"):
                    n = self._skip_rest_of_line()
                    self.bytes_read += n
                    self.garbage_bytes += len(line) + n
                    self.stats.note_garbage(self.lines, f"line longer than {self.max_line} bytes")
                    continue
                if not line.endswith(b"\n") and line.strip():
                    # The writer died inside this line; keep it only when it is whole JSON.
                    before = self.stats.garbage
                    event = parse_line(line, self.lines, self.stats)
                    if event is None and self.stats.garbage > before:
                        self.stats.garbage -= 1
                        self.stats.truncated += 1
                else:
                    event = parse_line(line, self.lines, self.stats)
                if event is None:
                    self.garbage_bytes += len(line)
                    continue
                yield event, len(line)
        finally:
            self.close()

    def close(self) -> None:
        self._fh.close()
        if self.progress is not None:
            self.progress.close()
