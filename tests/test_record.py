"""The event log: exact round trip, jq-readable lines, damaged files, process 0 only."""
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from vlmrl.instrument.bus import Bus
from vlmrl.instrument.events import (SCHEMA_VERSION, AttentionMatrix, CreditState, DecodeState, RunEnd, RunInfo,
                                     TrainingState)
from vlmrl.instrument.record import Recorder, encode_line
from vlmrl.instrument.log_read import LogFormatError, read_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample_events(n=20, seed=0):
    rng = np.random.default_rng(seed)
    out = [RunInfo(num_layers=4, num_heads=3, deepstack_layers=(1, 2), device_memory_limit=1 << 40, wall_time=999.5)]
    for i in range(n):
        pat = rng.random((4, 3)).astype(np.float32)
        out.append(DecodeState(step=i, token_id=int(rng.integers(0, 1000)), token_text=f"tok{i}\x1b[31m",
                               token_prob=float(rng.random()), cache_len=10 + i, cache_max=64,
                               attention_pattern=pat, attn_stats={"focus": pat, "max": pat * 0.5},
                               attention_row=rng.random(10 + i).astype(np.float32),
                               top_k=[(1, "a", 0.5), (2, "b", 0.25)], vision_span=(2, 6), vision_grid=(1, 4, 4),
                               entropy=float("nan") if i == 3 else 1.5, wall_time=1000.0 + i))
        if i % 5 == 4:
            out.append(TrainingState(step=i // 5, reward_mean=float(rng.random()), kl=1e-3, loss=-0.5,
                                     tokens_per_sec=123.0, grad_norm=None, wall_time=1000.0 + i))
    out.append(CreditState(tokens=["a", "b"], credits=[0.5, -0.25], step=3))
    out.append(AttentionMatrix(layer=None, head=2, query_tokens=["x", "y"], key_tokens=["x", "y"],
                               token_types=["special", "text"], matrix=np.array([[1, 0], [0.25, 0.75]], np.float16)))
    out.append(RunEnd(step=3, reason="finished", seconds=4.25))
    return out


def assert_same_event(a, b):
    assert type(a) is type(b)
    da, db = a.to_dict(), b.to_dict()
    assert da.keys() == db.keys()
    for k in da:
        va, vb = getattr(a, k), getattr(b, k)
        if isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and va.shape == vb.shape and np.array_equal(va, vb), k
        elif isinstance(va, dict):
            assert va.keys() == vb.keys()
            for kk in va:
                assert np.array_equal(va[kk], vb[kk]) and va[kk].dtype == vb[kk].dtype
        elif isinstance(va, float) and math.isnan(va):
            assert math.isnan(vb)
        else:
            assert va == vb, k


def record(path, events, run_info=None):
    bus = Bus()
    with Recorder(bus, str(path), run_info=run_info):
        for ev in events:
            bus.publish(ev)
    return bus


def test_round_trip_is_exact(tmp_path):
    events = sample_events()
    info = RunInfo(num_layers=4, num_heads=3)
    record(tmp_path / "run.jsonl", events, info)
    header, back, stats = read_log(str(tmp_path / "run.jsonl"))
    assert header["vlmrl_log"] == SCHEMA_VERSION
    assert header["run_info"].num_layers == 4
    assert stats.events == len(events) and stats.garbage == 0 and stats.truncated == 0
    assert len(back) == len(events)
    for a, b in zip(events, back):
        assert_same_event(a, b)


def test_lines_are_compact_json_that_jq_reads(tmp_path):
    path = tmp_path / "run.jsonl"
    record(path, sample_events(5), RunInfo())
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        json.loads(line)  # strict JSON: no NaN literal
        assert line.isascii() and b"\x1b" not in line
        assert b"NaN" not in line
    # attention_pattern is attn_stats["focus"] (as taps send it): written once plus a reference
    assert b'"attention_pattern":{"ref":"attn_stats.focus"}' in lines[2]  # after header and RunInfo
    # A float32 such as 0.1 is written as its own shortest decimal, not 17 digits.
    line = encode_line(DecodeState(attention_row=np.array([0.1, 0.2], np.float32)))
    assert '"v":[0.1,0.2]' in line
    if shutil.which("jq"):
        out = subprocess.run(["jq", "-c", "select(.kind==\"decode\") | .step"], stdin=open(path, "rb"),
                             capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["0", "1", "2", "3", "4"]


def test_large_arrays_are_smaller_than_decimal_lists(tmp_path):
    m = np.random.default_rng(1).random((256, 256)).astype(np.float32)
    line = encode_line(AttentionMatrix(matrix=m))
    assert len(line) < 1.5 * m.nbytes  # nested 17-digit lists would be ~5x
    assert len(json.dumps(m.astype(np.float64).tolist())) > 3 * len(line)


def test_truncated_last_line_and_garbage_are_skipped_and_counted(tmp_path):
    path = tmp_path / "run.jsonl"
    events = sample_events(6)
    record(path, events)
    lines = path.read_bytes().split(b"\n")[:-1]
    damaged = [lines[0], lines[1], b"this is not json", lines[2], b'{"kind": "nonsense"}', b'[1,2,3]',
               b'{"kind":"decode","step":"three"}', b"\xff\xfe binary", *lines[3:-1], lines[-1][: len(lines[-1]) // 2]]
    path.write_bytes(b"\n".join(damaged))
    header, back, stats = read_log(str(path))
    assert stats.garbage == 5
    assert stats.truncated == 1
    assert len(back) == len(events) - 1 == stats.events
    for a, b in zip(events, back):
        assert_same_event(a, b)
    assert "line 3" in stats.first_error


def test_whole_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "run.jsonl"
    record(path, sample_events(3))
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    _, back, stats = read_log(str(path))
    assert stats.truncated == 0 and len(back) == len(sample_events(3))


@pytest.mark.parametrize("content", [b"", b"hello world\n", b'{"kind": "decode"}\n', b"\x00\x01\x02" * 100,
                                     b'{"vlmrl_log": 999, "kind": "header"}\n'])
def test_not_a_log_raises_clear_error(tmp_path, content):
    path = tmp_path / "notalog.txt"
    path.write_bytes(content)
    with pytest.raises(LogFormatError, match="notalog.txt"):
        read_log(str(path))


def test_only_process_zero_writes(tmp_path):
    bus = Bus()
    rec = Recorder(bus, str(tmp_path / "p1.jsonl"), process_index=1)
    bus.publish(DecodeState(step=1))
    rec.close()
    assert not (tmp_path / "p1.jsonl").exists()
    assert bus.subscriptions == ()


def test_recorder_flushes_while_running_and_close_drains(tmp_path):
    path = tmp_path / "run.jsonl"
    bus = Bus()
    rec = Recorder(bus, str(path), poll=0.01)
    bus.publish(DecodeState(step=0))
    deadline = time.time() + 10
    while time.time() < deadline and path.read_bytes().count(b"\n") < 2:
        time.sleep(0.01)
    assert path.read_bytes().count(b"\n") == 2  # header + the event, visible before close
    for i in range(1, 500):
        bus.publish(DecodeState(step=i))
    rec.close()
    _, back, _ = read_log(str(path))
    assert [e.step for e in back] == list(range(500))
    assert rec.dropped == 0


def test_unencodable_event_is_skipped_not_fatal(tmp_path, capsys):
    path = tmp_path / "run.jsonl"
    bus = Bus()
    with Recorder(bus, str(path)) as rec:
        bus.publish(DecodeState(step=0, attention_row=np.array(["a"], dtype=object)))
        bus.publish(DecodeState(step=1))
    _, back, _ = read_log(str(path))
    assert [e.step for e in back] == [1]
    assert rec.errors == 1 and "could not encode" in capsys.readouterr().err


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.events import DecodeState, AttentionMatrix
    from vlmrl.instrument.record import Recorder
    bus = Bus(capacity=100000)
    rec = Recorder(bus, sys.argv[1], poll=0.001)
    rng = np.random.default_rng(0)
    i = 0
    while True:
        bus.publish(DecodeState(step=i, token_text=f"t{i}", attention_row=rng.random(2000).astype(np.float32),
                                cache_len=i))
        if i % 7 == 0:
            bus.publish(AttentionMatrix(step=i, matrix=rng.random((300, 300)).astype(np.float32)))
        i += 1
""")


@pytest.mark.slow
def test_sigkill_mid_write_leaves_a_log_whose_complete_events_all_read(tmp_path):
    path = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not path.exists() or path.stat().st_size < 3_000_000):
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no finally, no atexit, no flush
        proc.wait()
    raw = path.read_bytes()
    header, back, stats = read_log(str(path))
    complete = raw.count(b"\n") - 1  # lines after the header that got their newline
    assert stats.garbage == 0
    assert len(back) == complete
    assert stats.truncated == (0 if raw.endswith(b"\n") else 1)
    decodes = [e.step for e in back if isinstance(e, DecodeState)]
    assert decodes == list(range(len(decodes))) and len(decodes) > 10
    # Every prefix of the file is also readable: cuts at any byte lose only the cut line.
    for cut in np.random.default_rng(0).integers(len(raw.split(b"\n")[0]) + 1, len(raw), 20):
        (tmp_path / "cut.jsonl").write_bytes(raw[:cut])
        _, part, st = read_log(str(tmp_path / "cut.jsonl"))
        assert st.garbage == 0 and st.truncated <= 1
        assert len(part) == raw[:cut].count(b"\n") - 1 + (1 - st.truncated if not raw[:cut].endswith(b"\n") else 0)


def test_a_failing_disk_stops_the_recording_not_the_run(tmp_path, capsys):
    class FullDisk:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

        def close(self):
            raise OSError(28, "No space left on device")

    bus = Bus()
    rec = Recorder(bus, str(tmp_path / "run.jsonl"), poll=0.01)
    rec._fh = FullDisk()  # the disk fills up after the header
    for i in range(10):
        bus.publish(DecodeState(step=i))  # never raises, never blocks
    rec.close()
    assert "No space left" in rec.failed and rec.written == 0
    assert capsys.readouterr().err.count("writing stopped") == 1
