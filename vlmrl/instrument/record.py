"""The event log: a bus consumer that appends every event as one JSON line, and its reader.

Format (JSON Lines, one object per line, readable by jq):
  line 1  {"vlmrl_log": SCHEMA_VERSION, "kind": "header", "run_info": {...}|null, ...}
  then    {"kind": "decode", "step": 3, ...}   one line per event, fields as in events.py

Arrays are written compactly and exactly: small finite ones as a flat list of the
shortest decimals that round-trip in their own dtype (float32 0.1 is `0.1`, not
`0.10000000149011612`), larger ones as base64 of their little-endian bytes:
  {"nd": "float32", "shape": [28, 16], "v": [...]}  or  {"nd": ..., "shape": ..., "b64": "..."}
Non-finite scalars (jq rejects NaN) are written as {"nf": "nan" | "inf" | "-inf"}.

A batch of lines goes out in one write followed by a flush, so a reader (`--attach`) sees
whole batches and a process killed mid-write leaves at most one partial last line, which
`read_log` skips and counts. No JAX here: logs are read on machines without it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
import threading
from typing import Iterator, Optional

from vlmrl.instrument.events import SCHEMA_VERSION, Event, RunInfo, decode_event, encode_event

HEADER_KEY = "vlmrl_log"
HEADER_PREFIX = b'{"' + HEADER_KEY.encode() + b'":'
# The longest line a reader takes (a stated limit): a longer one is skipped and counted as a
# bad line, so one crafted line cannot take the reader's memory. The largest real event,
# an attention matrix pooled on device, is a few MB.
LINE_MAX = 16 << 20


class LogFormatError(ValueError):
    """The file is not a vlmrl event log (or one from a newer, unknown schema)."""



def encode_line(event: Event) -> str:
    """One compact JSON line (no newline) for an event."""
    # ensure_ascii keeps the line pure ASCII: no raw control or lone-surrogate bytes.
    return json.dumps(encode_event(event), separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def header_line(run_info: Optional[RunInfo] = None, process_index: int = 0) -> str:
    head = {
        HEADER_KEY: SCHEMA_VERSION,
        "kind": "header",
        "run_info": encode_event(run_info) if run_info is not None else None,
        "process_index": process_index,
        "pid": os.getpid(),
    }
    return json.dumps(head, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


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


def read_log(path: str) -> tuple:
    """Read a finished (or killed) log: (header dict, [events], ReadStats).

    Streams the file line by line: memory is the events kept plus one line of at most
    LINE_MAX bytes. A cut-off last line, lines longer than LINE_MAX and lines that are not
    valid events are skipped and counted; a file whose first line is not a vlmrl header,
    or that is not a readable regular file, raises LogFormatError.
    """
    with open_log(path) as fh:
        header = read_header(fh, path)
        stats = ReadStats()
        if header.get("bad_run_info"):
            stats.note_garbage(1, header["bad_run_info"])
        events = []
        for lineno, (line, complete) in enumerate(read_lines(fh), start=2):
            if line is None:
                stats.note_garbage(lineno, f"line longer than {LINE_MAX} bytes")
                continue
            if not complete and line.strip():
                # No newline after it: the writer died inside this line. Keep it only if it
                # is whole (a strict prefix of a JSON object never parses as one).
                try:
                    json.loads(line)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    stats.truncated += 1
                    continue
            ev = parse_line(line, lineno, stats)
            if ev is not None:
                events.append(ev)
    return header, events, stats


# ---------------------------------------------------------------- writer


class RecordError(ValueError):
    """--record cannot write where it was asked to (one line for the user, exit 2)."""


def check_record_path(path: str, force: bool = False) -> str:
    """What opening `path` for recording would do: "create", "append" or "replace"; raises
    RecordError when it must not be written (a symlink, not a regular file, a file that is
    not a vlmrl log of this schema without `force`, a missing directory)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise RecordError(f"--record {path}: directory {parent} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "create"
    except OSError as exc:
        raise RecordError(f"--record {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise RecordError(f"--record {path}: is a symbolic link; not followed (name the file itself)")
    if not stat.S_ISREG(st.st_mode):
        raise RecordError(f"--record {path}: exists and is not a regular file")
    if st.st_size == 0:
        return "append"
    try:
        with open_log(path) as fh:
            read_header(fh, path)
    except LogFormatError as exc:
        if force:
            return "replace"
        raise RecordError(f"--record {path}: exists and is not a vlmrl log of schema {SCHEMA_VERSION} "
                          f"({str(exc).removeprefix(path + ': ')}); refusing to overwrite it (--force replaces it)") from None
    return "append"


def open_for_append(path: str, force: bool = False):
    """Open `path` to record into without destroying anything: create it, append to a log
    of this schema (after a newline if a killed writer left a partial line), or replace
    another file only with `force`. Never follows a symlink. RecordError otherwise."""
    mode = check_record_path(path, force)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if mode == "replace":
        flags |= os.O_TRUNC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise RecordError(f"--record {path}: {exc.strerror or exc}") from None
    fh = open(fd, "w", encoding="ascii", newline="\n")
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as rd:
                rd.seek(size - 1)
                if rd.read(1) != b"\n":
                    fh.write("\n")
    except OSError as exc:
        fh.close()
        raise RecordError(f"--record {path}: {exc.strerror or exc}") from None
    return fh


class Recorder:
    """Writes every event published on `bus` to `path`, from its own thread.

    An existing log of this schema is appended to; any other existing file is refused with
    RecordError unless `force` (see `open_for_append`).

    Only process 0 writes (other processes get an inert recorder), so a multi-host run
    gives one log. The bus never blocks the producer; this thread drains its own large
    queue in batches, writes each batch with one write() and flushes it.
    """

    def __init__(self, bus, path: str, process_index: int = 0, run_info: Optional[RunInfo] = None,
                 capacity: int = 100_000, poll: float = 0.05, force: bool = False):
        self.path = path
        self.process_index = process_index
        self.active = process_index == 0
        self.written = 0
        self.errors = 0
        self.first_error = ""
        self.failed = ""  # why writing stopped (an OSError), "" while it works
        self._bus = bus
        self._poll = poll
        self._stop = threading.Event()
        self._sub = None
        self._fh = None
        self._thread = None
        if not self.active:
            return
        self._fh = open_for_append(path, force)
        try:
            self._fh.write(header_line(run_info, process_index) + "\n")
            self._fh.flush()
        except OSError as exc:
            try:
                self._fh.close()
            except OSError:
                pass  # the same failure again, flushing what could not be written
            raise RecordError(f"--record {path}: {exc.strerror or exc}") from None
        self._sub = bus.subscribe("recorder", capacity=capacity)
        self._thread = threading.Thread(target=self._run, name="vlmrl-recorder", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Events the bus dropped before this recorder could write them."""
        return self._sub.total_dropped if self._sub is not None else 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sub.wait(self._poll)
            self._write(self._sub.drain())
        self._write(self._sub.drain())

    def _write(self, batch: list) -> None:
        if not batch:
            return
        lines = []
        for event in batch:
            try:
                lines.append(encode_line(event))
            except Exception as exc:  # an unencodable event must not end the recording
                self.errors += 1
                if not self.first_error:
                    self.first_error = f"{type(event).__name__}: {exc}"
                    print(f"vlmrl recorder: skipped an event it could not encode ({self.first_error})", file=sys.stderr)
        if lines and not self.failed:
            try:
                self._fh.write("\n".join(lines) + "\n")
                self._fh.flush()
            except OSError as exc:  # disk full, file system gone: the run goes on unrecorded
                self.failed = f"{self.path}: {exc}"
                print(f"vlmrl recorder: writing stopped ({self.failed}); the run goes on", file=sys.stderr)
                return
            self.written += len(lines)

    def close(self) -> None:
        """Write everything still queued, then stop and close the file (idempotent)."""
        if not self.active or self._thread is None:
            return
        # Unsubscribe first so nothing arrives after the final drain and is silently lost.
        self._bus.unsubscribe(self._sub)
        self._stop.set()
        self._thread.join()
        self._thread = None
        try:
            self._fh.close()
        except OSError:
            pass  # already reported by _write; the buffered tail is lost either way

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
