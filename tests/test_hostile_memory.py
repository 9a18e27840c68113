"""Hostile input that would take memory: each case runs in a child process under RLIMIT_AS,
so a regression fails instead of swapping."""
from __future__ import annotations

import json
import os

from conftest import run_limited
from vlmrl.instrument.events import DecodeState
from vlmrl.instrument.record import encode_line, header_line
from vlmrl.instrument.log_read import LINE_MAX

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_LOG = os.path.join(REPO, "tests", "data", "tiny_run.jsonl")

# ------------------------------------------------------------------ memory, under RLIMIT_AS


def _peak_kb() -> str:
    return "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"


def _huge_line_log(path, mb: int, newline: bool = True) -> None:
    """A header, one good line, a `mb` MB inline-array line (10M entries at 120), a good line."""
    with open(path, "wb") as fh:
        fh.write((header_line() + "\n" + encode_line(DecodeState(step=1)) + "\n").encode())
        fh.write(b'{"kind":"decode","step":2,"attention_row":{"nd":"float32","shape":[10000000],"v":[')
        chunk = b"0.123456789," * 87381  # ~1 MiB
        for _ in range(mb):
            fh.write(chunk)
        fh.write(b"0]}}")
        if newline:
            fh.write(b"\n" + (encode_line(DecodeState(step=3)) + "\n").encode())


def test_a_120_mb_line_is_skipped_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    _huge_line_log(path, 120)
    code = f"""
        import json, sys
        from vlmrl.instrument.log_read import read_log
        from vlmrl.utils.tui.attach import LogFollower
        header, events, stats = read_log(sys.argv[1])
        f = LogFollower(sys.argv[1])
        polled = []
        for _ in range(10):
            polled += f.poll()
        print(json.dumps({{"steps": [e.step for e in events], "garbage": stats.garbage,
                          "attach": [e.step for e in polled], "attach_garbage": f.stats.garbage,
                          "peak_kb": {_peak_kb()}}}))
    """
    proc = run_limited(code, 700, args=(str(path),))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    print(out)  # the measured figures, with -s
    assert out["steps"] == [1, 3] and out["garbage"] == 1
    assert out["attach"] == [1, 3] and out["attach_garbage"] == 1
    assert out["peak_kb"] < 200 << 10, out  # measured 62 MB; buffering the line took 4 GB


def test_an_unterminated_line_under_attach_is_not_buffered_without_limit(tmp_path):
    path = tmp_path / "growing.jsonl"
    _huge_line_log(path, 40, newline=False)
    code = f"""
        import json, sys
        from vlmrl.instrument.events import DecodeState
        from vlmrl.instrument.record import encode_line
        from vlmrl.utils.tui.attach import LogFollower
        f = LogFollower(sys.argv[1])
        first = [e.step for _ in range(5) for e in f.poll()]
        held = len(f._buf)
        with open(sys.argv[1], "ab") as fh:  # the writer finally ends the line and goes on
            fh.write(b"\\n" + (encode_line(DecodeState(step=3)) + "\\n").encode())
        later = [e.step for _ in range(3) for e in f.poll()]
        print(json.dumps({{"first": first, "held": held, "later": later, "garbage": f.stats.garbage,
                          "peak_kb": {_peak_kb()}}}))
    """
    proc = run_limited(code, 600, args=(str(path),))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    print(out)  # the measured figures, with -s
    assert out["first"] == [1] and out["later"] == [3] and out["garbage"] == 1
    assert out["held"] <= LINE_MAX and out["peak_kb"] < 200 << 10, out  # measured 49 MB


ROWS = 5000  # ~80 x MAX_ROWS, and ~100 checkpoint saves at the spacing set below


def test_many_distinct_rows_replay_in_bounded_memory(tmp_path):
    """Each decode event names a new batch row: the store keeps MAX_ROWS of them (counted)
    and replay keeps at most MAX_CHECKPOINTS copies of the store."""
    with open(RUN_LOG) as fh:
        line = next(json.loads(raw) for raw in fh if '"kind":"decode"' in raw[:20])
    path = tmp_path / "rows.jsonl"
    with open(path, "w") as fh:
        fh.write(header_line() + "\n")
        for row in range(ROWS):
            line["seq_index"], line["step"] = row, row
            fh.write(json.dumps(line) + "\n")
    code = f"""
        import json, sys
        from vlmrl.utils.tui import replay
        from vlmrl.utils.tui.state import MAX_ROWS
        from vlmrl.utils.tui.store import Store
        replay.CHECKPOINT_EVERY = 50  # many saves, so the thinning is exercised
        log = replay.ReplayLog.open(sys.argv[1])
        store = log.store_at(Store)
        log.seek(log.num_steps // 3)
        back = log.store_at(Store)
        print(json.dumps({{"rows": len(store.snapshot().decodes), "max_rows": MAX_ROWS,
                          "dropped": store.rows_dropped, "checkpoints": len(log._checkpoints),
                          "max_checkpoints": replay.MAX_CHECKPOINTS, "back_rows": len(back.snapshot().decodes),
                          "problem": store.snapshot().problems[-1], "peak_kb": {_peak_kb()}}}))
    """
    proc = run_limited(code, 1200, args=(str(path),))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    print(out)  # the measured figures, with -s
    assert out["rows"] == out["max_rows"] == out["back_rows"] and out["dropped"] == ROWS - out["max_rows"]
    assert out["checkpoints"] <= out["max_checkpoints"] and "batch rows" in out["problem"]
    assert out["peak_kb"] < 300 << 10, out  # measured 52 MB


def test_text_memos_do_not_keep_long_texts():
    from vlmrl.utils.tui.canvas import MEMO_TEXT, sanitize

    before = sanitize.cache_info().currsize
    for i in range(50):
        sanitize(f"{i}" + "é" * (1 << 16))
    assert sanitize.cache_info().currsize == before
    sanitize("é" * MEMO_TEXT + "short enough")[:1]  # noqa: B018  (over the limit: not kept either)
    sanitize("é")
    assert sanitize.cache_info().currsize <= before + 1
