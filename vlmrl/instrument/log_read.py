"""Reading the event log that record.py writes: its header, its lines, whole or a piece at a time.

Every byte is hostile: lines have a length cap (LINE_MAX), a line that is not a valid
event is skipped and counted (ReadStats), and a file that is not a vlmrl log is refused
with one LogFormatError line. No JAX here: logs are read on machines without it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import stat
import time
from typing import Iterator, Optional

from vlmrl.instrument.events import SCHEMA_VERSION, Event, RunInfo, decode_event

HEADER_KEY = "vlmrl_log"
HEADER_PREFIX = b'{"' + HEADER_KEY.encode() + b'":'
# The longest line a reader takes (a stated limit): a longer one is skipped and counted as a
# bad line, so one crafted line cannot take the reader's memory. The largest real event,
# an attention matrix pooled on device, is a few MB.
LINE_MAX = 16 << 20


class LogFormatError(ValueError):
    """The file is not a vlmrl event log (or one from a newer, unknown schema)."""




def parse_header(line: bytes | str, path: str = "log") -> dict:
    """The header dict (run_info rebuilt as a RunInfo) or LogFormatError naming the file.

    A header whose run_info is not a valid RunInfo is still a header: run_info is None and
    "bad_run_info" says why (the readers count it as a bad line; the rest plays)."""
    try:
        head = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        head = None
    if not isinstance(head, dict) or HEADER_KEY not in head:
        raise LogFormatError(f"{path}: not a vlmrl event log (first line is not a vlmrl log header)")
    version = head[HEADER_KEY]
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise LogFormatError(f"{path}: log schema version {version!r} is not supported (this vlmrl reads up to {SCHEMA_VERSION})")
    info = head.get("run_info")
    try:
        head["run_info"] = decode_event(info) if info is not None else None
        if head["run_info"] is not None and not isinstance(head["run_info"], RunInfo):
            raise ValueError("it is not a run_info event")
    except ValueError as exc:
        head["run_info"], head["bad_run_info"] = None, f"bad run_info in the log header: {str(exc)[:200]}"
    return head


@dataclasses.dataclass
class ReadStats:
    """What reading a log found: events kept, lines skipped and why."""

    events: int = 0
    garbage: int = 0  # complete lines that are not valid events (too long ones included)
    truncated: int = 0  # a last line cut short (writer killed mid-write)
    first_error: str = ""

    def note_garbage(self, lineno: int, why: str) -> None:
        self.garbage += 1
        if not self.first_error:
            self.first_error = f"line {lineno}: {why}"

    @property
    def skipped(self) -> int:
        return self.garbage + self.truncated

    def summary(self) -> str:
        return f"{self.events} events, {self.garbage} garbage lines skipped, {self.truncated} truncated line skipped"


def parse_line(line: bytes, lineno: int, stats: ReadStats) -> Optional[Event]:
    """One complete event line -> Event, or None (counted in stats) when it is garbage.

    A repeated header (a run appended to the log) gives its RunInfo, or None."""
    if not line.strip():
        return None
    if len(line) > LINE_MAX:
        stats.note_garbage(lineno, f"line longer than {LINE_MAX} bytes")
        return None
    try:
        data = json.loads(line)
        if isinstance(data, dict) and data.get("kind") == "header":
            head = parse_header(line)
            if head.get("bad_run_info"):
                raise ValueError(head["bad_run_info"])
            event = head.get("run_info")
            if event is None:
                return None
        else:
            event = decode_event(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # LogFormatError is a ValueError
        stats.note_garbage(lineno, str(exc)[:200])
        return None
    stats.events += 1
    return event


def open_log(path: str):
    """Open a log for reading (binary); LogFormatError when it is not a readable regular file.

    A directory, a FIFO (whose open would wait for a writer) or a device (/dev/zero never
    ends) is refused before it is opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise LogFormatError(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise LogFormatError(f"{path}: {what}, not a vlmrl event log")
    try:
        return open(path, "rb")
    except OSError as exc:
        raise LogFormatError(f"{path}: {exc.strerror or exc}") from None


def read_header(fh, path: str) -> dict:
    """The header of a log opened with open_log (its first line), or LogFormatError."""
    # The writer starts every log with this exact prefix: anything else is refused after
    # a few bytes, so a huge file with no newline is never read into memory.
    peek = fh.read(len(HEADER_PREFIX))
    if not peek.strip():
        raise LogFormatError(f"{path}: empty file, not a vlmrl event log")
    if peek != HEADER_PREFIX:
        parse_header(peek, path)
    line = peek + fh.readline(LINE_MAX + 1)
    if len(line) > LINE_MAX:
        raise LogFormatError(f"{path}: first line longer than {LINE_MAX} bytes, not a vlmrl event log")
    return parse_header(line, path)


def read_lines(fh, limit: int = LINE_MAX) -> Iterator[tuple]:
    """(line, complete) for each line of `fh`, newline stripped; complete is False for a
    last line with no newline. A line over `limit` bytes is read past in chunks, never
    held whole, and comes as (None, True)."""
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        if line.endswith(b"\n"):
            yield line[:-1], True
        elif len(line) <= limit:
            yield line, False  # the end of the file, no newline after it
            return
        else:
            while line and not line.endswith(b"\n"):
                line = fh.readline(1 << 20)
            yield None, True


class LogReader:
    """A finished (or killed) log read a piece at a time, so a viewer can show the start of
    a long log while the rest is read.

    Opening reads only the header (LogFormatError or FileNotFoundError at once, as
    read_log). `read()` returns the next events; memory is the events returned plus one
    line of at most LINE_MAX bytes. A cut-off last line, lines longer than LINE_MAX and
    lines that are not valid events are skipped and counted in `stats`.
    """

    def __init__(self, path: str):
        self.path = path
        self._fh = open_log(path)
        try:
            self.header = read_header(self._fh, path)
            self.size = max(os.fstat(self._fh.fileno()).st_size, 1)
        except BaseException:
            self._fh.close()
            raise
        self.stats = ReadStats()
        if self.header.get("bad_run_info"):
            self.stats.note_garbage(1, self.header["bad_run_info"])
        self._lines = enumerate(read_lines(self._fh), start=2)
        self.done = False

    def progress(self) -> float:
        """The share of the file's bytes read so far (1.0 once done)."""
        if self.done:
            return 1.0
        try:
            return min(self._fh.tell() / self.size, 1.0)
        except (OSError, ValueError):
            return 0.0

    def read(self, seconds: Optional[float] = None) -> list:
        """The next events: all the rest, or as many as `seconds` of reading give (at least one line)."""
        events: list = []
        if self.done:
            return events
        deadline = None if seconds is None else time.monotonic() + seconds
        stats = self.stats
        for lineno, (line, complete) in self._lines:
            if line is None:
                stats.note_garbage(lineno, f"line longer than {LINE_MAX} bytes")
            elif complete or not line.strip() or _whole(line, stats):
                ev = parse_line(line, lineno, stats)
                if ev is not None:
                    events.append(ev)
            if deadline is not None and time.monotonic() >= deadline:
                return events
        self.close()
        return events

    def close(self) -> None:
        self.done = True
        self._fh.close()


def _whole(line: bytes, stats: ReadStats) -> bool:
    """A last line with no newline: the writer died inside it. Keep it only if it is whole
    (a strict prefix of a JSON object never parses as one); else count it as truncated."""
    try:
        json.loads(line)
        return True
    except (ValueError, UnicodeDecodeError, RecursionError):
        stats.truncated += 1
        return False


def read_log(path: str) -> tuple:
    """Read a whole finished (or killed) log: (header dict, [events], ReadStats); see LogReader."""
    reader = LogReader(path)
    try:
        events = reader.read()
    finally:
        reader.close()
    return reader.header, events, reader.stats
