"""Replay and attach: a recorded run shows the same screens as live; tail -f; navigation."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from vlmrl.instrument.bus import Bus
from vlmrl.instrument.events import AttentionMatrix, DecodeState, RunInfo, TrainingState
from vlmrl.instrument.record import Recorder, encode_line, header_line
from vlmrl.instrument.log_read import LogFormatError
from vlmrl.utils.tui import attach as at
from vlmrl.utils.tui import replay as rp
from vlmrl.utils.tui.layout import render_screen
from vlmrl.utils.tui.palette import palette_for
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.synthetic import SyntheticRun
from vlmrl.utils.tui.view import ViewState, handle_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW = 100.0


def fixed_store():
    return Store(clock=lambda: NOW, started_at=0.0)


def run_events(n=120, seed=3):
    clock = iter(np.arange(1000.0, 5000.0, 0.05)).__next__
    run = SyntheticRun(num_layers=6, num_heads=4, batch=2, gen_tokens=10, image_grid=(1, 4, 4), seed=seed,
                       prefill_walk=2, clock=lambda: float(clock()))
    return run.take(n)


def screens(state, views, sizes=((80, 24), (120, 40), (200, 60))):
    out = []
    for view in views:
        for w, h in sizes:
            for color in (True, False):
                c = render_screen(state, view, w, h, NOW, palette_for(color))
                out.append((view.mode, w, h, color, [list(r) for r in c.chars], [list(r) for r in c.styles]))
    return out


def views_for(state):
    base = ViewState()
    keys = {"dashboard": [], "matrix": ["m", "KEY_DOWN", "KEY_DOWN", "KEY_RIGHT", "n"],
            "explorer": ["e", "KEY_LEFT", "KEY_DOWN", "+", "+"]}
    out = []
    for seq in keys.values():
        v = base
        for k in seq:
            v = handle_key(v, k, state)
        out.append(v)
    return out


def test_recorded_run_replays_to_the_same_screens_as_live(tmp_path):
    path = tmp_path / "run.jsonl"
    events = run_events()
    bus = Bus(capacity=10_000)
    live_sub = bus.subscribe("dashboard", capacity=10_000)
    rec = Recorder(bus, str(path))
    live = fixed_store()
    live_snaps = {}
    for i, ev in enumerate(events, start=1):
        bus.publish(ev)
        for got in live_sub.drain():
            live.apply(got)
        live_snaps[i] = live.snapshot()
    rec.close()

    log = rp.ReplayLog.open(str(path))
    assert log.stats.garbage == 0 and len(log.events) == len(events)
    # the end of the log, and a few steps on the way, look exactly as they did live
    checked = 0
    for index in (log.num_steps, 1, log.num_steps // 3, log.num_steps // 2, log.num_steps - 5):
        log.seek(index)
        state = log.store_at(fixed_store).snapshot()
        live_state = live_snaps[log.position]
        assert screens(state, views_for(state)) == screens(live_state, views_for(live_state))
        checked += 1
    assert checked == 5
    # the matrix and explorer views really had something to show, and steps differ
    text = render_screen(state, views_for(state)[2], 120, 40, NOW, palette_for(False)).text()
    assert "LINKS" in text and "no attention rows" not in text
    text = render_screen(state, views_for(state)[1], 120, 40, NOW, palette_for(False)).text()
    assert "layer 5 head mean" in text and "no attention matrix" not in text
    log.seek(log.num_steps // 3)
    early = log.store_at(fixed_store).snapshot()
    assert screens(early, views_for(early)) != screens(state, views_for(state))


def test_streamed_replay_shows_the_log_while_it_loads_and_ends_as_the_whole_read(tmp_path):
    """--replay opens the screen at once and reads the log a slice a frame: while it loads
    the cursor follows the newest step (unless the user moved it), the footer says how much
    is read, and once read the steps and events are those of reading the file up front."""
    from vlmrl.instrument.record import encode_line

    path = tmp_path / "run.jsonl"
    events = run_events(60)
    lines = [header_line(RunInfo(num_layers=6, num_heads=4))] + [encode_line(e) for e in events]
    lines.insert(20, "{not json")
    path.write_text("\n".join(lines) + "\n")
    whole = rp.ReplayLog.open(str(path))

    log = rp.ReplayLog.stream(str(path))
    assert log.loading and log.num_steps == 0 and log.events == [log.header["run_info"]]  # the header's, at once
    log.load(0.0)  # a spent budget still reads one line a call
    assert log.loading and "loading" in log.status() and "% of the log" in log.status()
    for _ in range(30):
        log.load(0.0)
    assert 0 < log.num_steps < whole.num_steps and log.index == log.num_steps  # following the end
    assert log.store_at(fixed_store).snapshot().decodes
    log.handle_key("KEY_HOME")
    log.load(0.0)
    assert log.index == 0  # the user's place is kept while the rest loads
    log.handle_key("G")
    log.load(0.0)
    assert log.index == log.num_steps  # End follows the log again
    log.load(None)
    assert not log.loading and "loading" not in log.status()
    assert log.stops == whole.stops and log.index == whole.index
    assert [encode_line(e) for e in log.events] == [encode_line(e) for e in whole.events]
    assert (log.stats.events, log.stats.garbage, log.stats.first_error) == (
        whole.stats.events, whole.stats.garbage, whole.stats.first_error) and log.stats.garbage == 1


def test_store_at_going_back_equals_a_fresh_rebuild(monkeypatch):
    monkeypatch.setattr(rp, "CHECKPOINT_EVERY", 7)
    events = run_events(90)
    log = rp.ReplayLog(events)
    view = ViewState()
    for index in (log.num_steps, 3, 20, 19, 0, log.num_steps - 1, 11):
        log.seek(index)
        got = log.store_at(fixed_store).snapshot()
        fresh = fixed_store()
        for ev in log.events_until():
            fresh.apply(ev)
        want = fresh.snapshot()
        assert render_screen(got, view, 120, 40, NOW).text() == render_screen(want, view, 120, 40, NOW).text()
        assert got.counts == want.counts
    assert log._checkpoints  # going back used saved copies, not only full rebuilds


def test_navigation_keys_and_playback():
    events = [RunInfo(wall_time=0.0)] + [DecodeState(step=i, wall_time=10.0 + 0.1 * i) for i in range(5)] + \
        [AttentionMatrix(wall_time=10.45), TrainingState(step=0, wall_time=30.0)]
    log = rp.ReplayLog(events)
    assert log.position == len(events)  # opens at the end
    assert log.stops == [0, 2, 3, 4, 5, 6, 8]
    assert log.handle_key("KEY_HOME") and log.position == 0
    assert log.handle_key("KEY_RIGHT") and log.position == 2 and log.current_event().step == 0
    log.handle_key("KEY_RIGHT")
    log.handle_key("KEY_LEFT")
    assert log.position == 2
    assert log.handle_key("KEY_END") and log.position == 8
    assert not log.handle_key("x")
    log.handle_key("KEY_HOME")
    log.handle_key("+")
    assert log.speed == 2.0
    log.handle_key(" ")
    assert log.playing
    assert not log.tick(100.0)  # first tick schedules the next step
    assert log.tick(100.03) and log.position == 2
    assert not log.tick(100.07)
    assert log.tick(100.08) and log.position == 3  # 0.1 s recorded, at 2x
    assert log.tick(100.23) and log.position == 6
    assert not log.tick(100.7)  # a 19.6 s pause in the run is cut to MAX_GAP_S = 1 s, at 2x
    assert log.tick(100.74) and log.position == 8 and not log.playing  # and stops at the end
    assert "REPLAY 6/6" in log.status() and "training step 0" in log.status()
    log.handle_key(" ")  # play at the end restarts from the top
    assert log.playing and log.position == 0
    for _ in range(20):
        log.handle_key("-")
    assert log.speed == rp.SPEEDS[0]


def _write(path, data: bytes):
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()


def _collect(path, stop, out, errors):
    try:
        for ev in at.attach_events(str(path), stop=stop, poll=0.01):
            out.append(ev)
    except Exception as exc:  # surfaced to the test thread
        errors.append(exc)


def _wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_attach_picks_up_lines_appended_after_it_started(tmp_path):
    path = tmp_path / "growing.jsonl"
    stop = threading.Event()
    out, errors = [], []
    t = threading.Thread(target=_collect, args=(path, stop, out, errors), daemon=True)
    t.start()  # before the file even exists
    time.sleep(0.05)
    _write(path, (header_line(RunInfo(num_layers=3)) + "\n").encode())
    _write(path, (encode_line(DecodeState(step=0)) + "\n").encode())
    assert _wait_for(lambda: len(out) == 2), out
    line = (encode_line(DecodeState(step=1, attention_row=np.arange(100, dtype=np.float32))) + "\n").encode()
    _write(path, line[:37])  # half a line: nothing yet
    time.sleep(0.1)
    assert len(out) == 2
    _write(path, line[37:] + (encode_line(DecodeState(step=2)) + "\n").encode())
    assert _wait_for(lambda: len(out) == 4), out
    _write(path, b"garbage line\n" + (encode_line(DecodeState(step=3)) + "\n").encode())
    assert _wait_for(lambda: len(out) == 5), out
    stop.set()
    t.join(5)
    assert not t.is_alive() and not errors
    assert isinstance(out[0], RunInfo) and out[0].num_layers == 3
    assert [e.step for e in out[1:]] == [0, 1, 2, 3]
    assert np.array_equal(out[2].attention_row, np.arange(100, dtype=np.float32))


def test_attach_follows_a_live_recorder_and_a_restarted_log(tmp_path):
    path = tmp_path / "run.jsonl"
    bus = Bus()
    rec = Recorder(bus, str(path), poll=0.005)
    stop = threading.Event()
    out, errors = [], []
    t = threading.Thread(target=_collect, args=(path, stop, out, errors), daemon=True)
    t.start()
    for i in range(50):
        bus.publish(DecodeState(step=i))
        time.sleep(0.002)
    rec.close()
    assert _wait_for(lambda: len(out) == 50), len(out)
    # the run starts again and rewrites the file: attach starts over from its top
    rec = Recorder(bus, str(path), poll=0.005)
    bus.publish(TrainingState(step=7))
    rec.close()
    assert _wait_for(lambda: any(isinstance(e, TrainingState) for e in out))
    stop.set()
    t.join(5)
    assert not errors and [e.step for e in out[:50]] == list(range(50))


@pytest.mark.parametrize("content", [b"hello", b"not a log\nat all\n", b'{"kind": "decode"}\n'])
def test_attach_to_a_file_that_is_not_a_log_raises(tmp_path, content):
    path = tmp_path / "other.txt"
    path.write_bytes(content)
    with pytest.raises(LogFormatError, match="other.txt"):
        for _ in at.attach_events(str(path), stop=lambda: False, poll=0.01):
            pass


@pytest.mark.parametrize("flag", ["--replay", "--attach"])
def test_cli_exits_2_with_a_clear_message_for_a_file_that_is_not_a_log(tmp_path, flag):
    path = tmp_path / "notes.txt"
    path.write_text("just some notes\n")
    proc = subprocess.run([sys.executable, "-m", "vlmrl.utils.tui_live", flag, str(path), "--seconds", "20"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "notes.txt" in proc.stderr and "not a vlmrl event log" in proc.stderr
    assert "\x1b" not in proc.stdout + proc.stderr


WRITER = textwrap.dedent("""
    import sys
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.record import Recorder
    from vlmrl.utils.tui.synthetic import SyntheticRun
    bus = Bus(capacity=100000)
    run = SyntheticRun(num_layers=6, num_heads=4, batch=2, gen_tokens=12, image_grid=(1, 8, 8))
    rec = Recorder(bus, sys.argv[1], run_info=run.info, poll=0.001)
    for ev in run.events():
        bus.publish(ev)
""")


@pytest.mark.slow
def test_log_of_a_sigkilled_run_replays_every_complete_event(tmp_path):
    path = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO)
    try:
        assert _wait_for(lambda: path.exists() and path.stat().st_size > 2_000_000, timeout=60)
    finally:
        proc.kill()
        proc.wait()
    raw = path.read_bytes()
    log = rp.ReplayLog.open(str(path))
    assert log.stats.garbage == 0 and log.stats.truncated <= 1
    assert len(log.events) == raw.count(b"\n") - 1  # the header's RunInfo is also an event line
    view = ViewState()
    for index in range(0, log.num_steps + 1, max(1, log.num_steps // 15)):
        log.seek(index)
        state = log.store_at(Store).snapshot()
        assert not state.problems
        for v in views_for(state):
            render_screen(state, v, 120, 40, NOW)
    assert state.counts.get("decode", 0) > 50


def test_follower_takes_a_line_longer_than_its_read_chunk_in_one_poll(tmp_path):
    path = tmp_path / "big.jsonl"
    big = AttentionMatrix(matrix=np.random.default_rng(0).random((64, 64)).astype(np.float32))
    path.write_bytes((header_line() + "\n" + encode_line(big) + "\n").encode())
    follower = at.LogFollower(str(path), chunk=256)
    got = follower.poll()
    assert len(got) == 1 and np.array_equal(got[0].matrix, big.matrix)
    assert follower.poll() == []
    _write(path, (encode_line(DecodeState(step=5)) + "\n").encode())
    assert [e.step for e in follower.poll()] == [5]


def test_reading_and_viewing_logs_never_imports_jax(tmp_path):
    path = tmp_path / "run.jsonl"
    bus = Bus()
    with Recorder(bus, str(path)):
        for ev in run_events(40):
            bus.publish(ev)
    code = ("import sys\n"
            "from vlmrl.utils.tui import replay, explorer_math\n"
            "from vlmrl.utils.tui.panels import matrix, explorer\n"
            "from vlmrl.utils.tui.store import Store\n"
            f"log = replay.ReplayLog.open({str(path)!r})\n"
            "log.store_at(Store)\n"
            "assert 'jax' not in sys.modules, 'jax was imported'\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
