"""`python -m vlmrl.analyze RUN.jsonl --out DIR`: report.json, PNG figures and index.html.

Every failure a user can cause (not a log, unreadable file, an --out that is a file) is one
line on stderr and exit status 2. Files are written to a temporary name and renamed, so an
interrupted run never leaves a half-written report.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from typing import List, Optional

from vlmrl.analyze import rowstats
from vlmrl.analyze.logstream import LogStream, Progress
from vlmrl.analyze.report import Analysis
from vlmrl.errors import UsageError
from vlmrl.instrument.events import RunInfo
from vlmrl.instrument.log_read import LogFormatError


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vlmrl.analyze",
                                description="Attention and RL report over a recorded vlmrl event log.")
    p.add_argument("log", help="event log written by --record (JSON Lines)")
    p.add_argument("--out", required=True, help="directory for report.json, figures and index.html")
    p.add_argument("--window", type=int, default=rowstats.DIAGONAL_WINDOW,
                   help=f"keys the diagonal statistic sums (default {rowstats.DIAGONAL_WINDOW})")
    p.add_argument("--mass", type=float, default=rowstats.DENSITY_MASS,
                   help=f"mass the density statistic asks for (default {rowstats.DENSITY_MASS})")
    p.add_argument("--no-figures", action="store_true", help="write report.json and a page without figures")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar on stderr (auto: when stderr is a terminal)")
    args = p.parse_args(argv)
    if args.window < 1:
        raise UsageError(f"--window must be >= 1, got {args.window}")
    if not 0.0 < args.mass <= 1.0:
        raise UsageError(f"--mass must be in (0, 1], got {args.mass}")
    return args


def write_atomic(path: str, data: bytes) -> None:
    """Write data to path via a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is for others to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def analyze(path: str, window: int = rowstats.DIAGONAL_WINDOW, mass: float = rowstats.DENSITY_MASS,
            progress: Optional[Progress] = None) -> tuple:
    """(report dict, Analysis) of one log, read as a stream.

    A log that `--record` appended runs to holds several runs, each from its header line:
    the analysis is of the LAST run only (a new header starts the sums afresh), and the
    report's source says how many runs the file holds and the line the analysed one starts
    at, so runs are never silently merged."""
    stream = LogStream(path, progress=progress)
    analysis = Analysis(stream.header, window=window, mass=mass)
    run = 1
    for event, nbytes in stream:
        if stream.runs != run:  # an appended run's header line came: start again from it
            run = stream.runs
            header = stream.from_header and isinstance(event, RunInfo)
            analysis = Analysis({"run_info": event} if header else None, window=window, mass=mass)
            if header:
                continue
        analysis.add(event, nbytes)
    if stream.runs != run:  # the log ends with a header (or a garbled one): an empty last run
        analysis = Analysis(None, window=window, mass=mass)
    st = stream.stats
    source = {"path": os.path.abspath(path), "bytes": stream.size, "lines": stream.lines, "events": st.events,
              "garbage": st.garbage, "truncated": st.truncated, "first_error": st.first_error,
              "skipped_bytes": stream.garbage_bytes, "runs": stream.runs, "run_first_line": stream.run_line}
    return analysis.report(source), analysis


def finite(x):
    """The report with any non-finite float as None (JSON has no NaN; a hostile log's extreme
    values could overflow a mean)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x


def write_outputs(report: dict, analysis: Analysis, out: str, figures: bool = True) -> None:
    """report.json, the figures (when asked for and matplotlib is there) and index.html in out."""
    report = finite(report)
    write_atomic(os.path.join(out, "report.json"), (json.dumps(report, indent=1, allow_nan=False) + "\n").encode())
    drawn, note = {}, ""
    if figures:
        try:
            from vlmrl.analyze import figures as figs
        except ImportError:
            note = "figures skipped: matplotlib is not installed (pip install 'vlmrl[report]')"
            print(f"vlmrl.analyze: {note}", file=sys.stderr)
        else:
            drawn, failed = figs.write_all(report, analysis, out, write_atomic)
            if failed:
                note = "figures not drawn: " + "; ".join(failed)
                print(f"vlmrl.analyze: {note}"[:300], file=sys.stderr)
    from vlmrl.analyze import page

    write_atomic(os.path.join(out, "index.html"), page.render(report, drawn, out, note).encode("utf-8"))


def _check_out(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: exists and is not a directory")


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse_args(argv)
        _check_out(args.out)  # before a long read, not after
        enabled = {"auto": None, "on": True, "off": False}[args.progress]
        report, analysis = analyze(args.log, args.window, args.mass, Progress(enabled=enabled))
        os.makedirs(args.out, exist_ok=True)
        write_outputs(report, analysis, args.out, figures=not args.no_figures)
    except (UsageError, LogFormatError) as exc:
        print(f"vlmrl.analyze: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"vlmrl.analyze: {exc.filename or ''}: {exc.strerror or exc}".replace(": : ", ": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlmrl.analyze: interrupted, nothing more written", file=sys.stderr)
        return 130
    except Exception as exc:  # no traceback reaches a user; the line names it as a bug to report
        print(f"vlmrl.analyze: internal error ({type(exc).__name__}: {exc}), please report it with the log",
              file=sys.stderr)
        return 2
    src = report["source"]
    runs = "" if src["runs"] == 1 else \
        f"the log holds {src['runs']} runs (appended by --record); analysed the last, from line {src['run_first_line']}: "
    print(f"vlmrl.analyze: {runs}{src['events']} events -> {os.path.join(args.out, 'index.html')}", file=sys.stderr)
    return 0
