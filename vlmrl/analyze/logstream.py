"""Read a recorded event log one line at a time, with a line-length cap and a progress bar.

Memory stays bounded by the longest accepted line (log_read.LINE_MAX; longer ones are read
past and counted, never held), whatever the size of the file: a log of a long run can be
far larger than the RAM of the laptop reading it. Opening, the header, line splitting and
decoding are the recorder's own (`vlmrl.instrument.record`), so the report reads exactly
what `--attach` and `--replay` read.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Iterator, Optional, TextIO

from vlmrl.instrument.log_read import HEADER_PREFIX, LINE_MAX, ReadStats, open_log, parse_line, read_header, read_lines


class Progress:
    """A one-line progress bar on a terminal's stderr (nothing when stderr is not a TTY)."""

    def __init__(self, total: int = 0, stream: Optional[TextIO] = None, enabled: Optional[bool] = None,
                 interval: float = 0.2):
        self.stream = stream if stream is not None else sys.stderr
        self.total = total  # bytes; LogStream sets it from the file it opens
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
        frac = min(done / max(self.total, 1), 1.0)
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

    Raises LogFormatError (a one-line message) when the file is not a readable vlmrl log,
    FileNotFoundError when there is none.

    `--record` onto an existing log appends a run: its own header line, then its events.
    `runs` counts the header lines read so far (the first line's included) and `run_line`
    is the line number of the newest; `from_header` says whether the event just yielded is
    that header's RunInfo.
    """

    def __init__(self, path: str, progress: Optional[Progress] = None, max_line: int = LINE_MAX):
        self.path = path
        self.max_line = max_line
        self.stats = ReadStats()
        self.lines = 1
        self.garbage_bytes = 0
        self.progress = progress
        self._fh = open_log(path)
        try:
            self.size = os.fstat(self._fh.fileno()).st_size
            if progress is not None and not progress.total:
                progress.total = self.size
            self.header = read_header(self._fh, path)
        except BaseException:
            self._fh.close()
            raise
        if self.header.get("bad_run_info"):
            self.stats.note_garbage(1, self.header["bad_run_info"])
        self.bytes_read = self._fh.tell()
        self.runs, self.run_line, self.from_header = 1, 1, False

    def __iter__(self) -> Iterator[tuple]:
        try:
            for line, complete in read_lines(self._fh, self.max_line):
                self.lines += 1
                if line is None:  # longer than max_line: read past, never held
                    before, self.bytes_read = self.bytes_read, self._fh.tell()
                    self.garbage_bytes += self.bytes_read - before
                    self.stats.note_garbage(self.lines, f"line longer than {self.max_line} bytes")
                    continue
                n = len(line) + complete
                self.bytes_read += n
                if self.progress is not None:
                    self.progress.update(self.bytes_read)
                if not complete and line.strip() and not _whole_json(line):
                    self.stats.truncated += 1  # the writer died inside this line
                    self.garbage_bytes += n
                    continue
                header = line.startswith(HEADER_PREFIX)  # (the recorder writes its key first)
                if header:
                    self.runs, self.run_line = self.runs + 1, self.lines
                event = parse_line(line, self.lines, self.stats)
                self.from_header = header
                if event is None:
                    self.garbage_bytes += n
                    continue
                yield event, n
        finally:
            self.close()

    def close(self) -> None:
        self._fh.close()
        if self.progress is not None:
            self.progress.close()


def _whole_json(line: bytes) -> bool:
    """A last line without a newline is kept only when it parses (a strict prefix of a JSON
    object never does)."""
    try:
        json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return True
