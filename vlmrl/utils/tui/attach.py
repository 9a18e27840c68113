"""Following a log that another process is still writing (`--attach`), like tail -f.

Reads the event log written by `vlmrl.instrument.record.Recorder`; no JAX here, so a
laptop can watch a run on a GPU node (e.g. over sshfs).
"""
from __future__ import annotations

import os
import time
from typing import Iterator, List, Optional

from vlmrl.instrument.events import Event
from vlmrl.instrument.log_read import HEADER_PREFIX, LINE_MAX, LogFormatError, ReadStats, open_log, parse_header, parse_line

# One poll reads at most this much, so a huge file is taken over several polls and the
# caller can still honour its stop condition (--seconds, q) in between.
POLL_BYTES = 64 << 20

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


__all__ = ["LogFollower", "attach_events"]
