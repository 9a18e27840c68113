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
the reader (log_read.py) skips and counts. No JAX here.
"""
from __future__ import annotations

import json
import os
import stat
import sys
import threading
from typing import Optional

from vlmrl.instrument.events import SCHEMA_VERSION, Event, RunInfo, encode_event
from vlmrl.instrument.log_read import HEADER_KEY, LogFormatError, open_log, read_header



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
