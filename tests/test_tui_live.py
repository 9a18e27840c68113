"""LiveTUI end to end in a pseudo-terminal: the real bytes go through pyte.

Titles and values on screen at 80x24, 120x40, 200x60; keys; resize; NO_COLOR; dropped
events shown; producers never blocked by a stuck terminal; the `queue` API.
"""
from __future__ import annotations

import fcntl
import os
import re
import struct
import termios
import threading
import time
import unicodedata

import pyte
import pytest
import wcwidth

from vlmrl.instrument.bus import Bus
from vlmrl.instrument.events import DecodeState, TrainingState
from vlmrl.utils.tui import layout
from vlmrl.utils.tui.synthetic import SyntheticRun
from vlmrl.utils.tui_live import LiveTUI

TITLES = {"header": "VLMRL", "decode": "DECODE LIVE", "flow": "COMPUTATION FLOW", "attention": "ATTENTION FLOW",
          "vision": "VISION INJECTION", "mrope": "mRoPE", "credit": "TOKEN CREDIT", "kv": "KV CACHE MEMORY",
          "footer": "dropped"}


def wait_until(cond, timeout=5.0):
    """Poll `cond` until it holds or `timeout` passes (the assertion after it decides)."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)


class PtyDash:
    """A LiveTUI drawing on a pty whose output a thread collects."""

    def __init__(self, cols=120, rows=40, bus=None, depth="256", **kw):
        self.master, self.slave = os.openpty()
        self.size(cols, rows)
        self.out = bytearray()
        self.reading = threading.Event()
        self.reading.set()
        self._done = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.bus = bus or Bus()
        self.tui = LiveTUI(bus=self.bus, out_fd=self.slave, in_fd=self.slave, depth=depth, fps=50, **kw)

    def size(self, cols, rows):
        self.cols, self.rows = cols, rows
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _read(self):
        import select
        while not self._done:
            self.reading.wait()
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:
                    return

    def key(self, k: str):
        os.write(self.master, k.encode())

    def frames(self) -> int:
        return bytes(self.out).count(b"\x1b[?2026l")

    def start_with(self, events):
        """Start the dashboard and publish `events` to it."""
        self.tui.start()
        for ev in events:
            self.tui.publish(ev)

    def wait_frames(self, n=3, timeout=10.0):
        target = self.frames() + n
        wait_until(lambda: self.frames() >= target, timeout)
        assert self.frames() >= target, "no new frames"

    def screen(self) -> pyte.Screen:
        data = bytes(self.out)
        start = data.rfind(b"\x1b[2J")  # the last full repaint is where the current size began
        s = pyte.Screen(self.cols, self.rows)
        pyte.ByteStream(s).feed(data[max(0, start - 8):])
        return s

    def text(self) -> str:
        return "\n".join(self.screen().display)

    def close(self):
        self.tui.stop()
        time.sleep(0.05)
        self._done = True
        self._reader.join(2)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def events():
    return SyntheticRun(num_layers=28, num_heads=16, batch=2, gen_tokens=12, seed=4, prefill_walk=2).take(80)


@pytest.mark.parametrize("cols,rows", [(80, 24), (120, 40), (200, 60)])
def test_every_panel_title_and_values_on_screen(cols, rows, events):
    d = PtyDash(cols, rows)
    try:
        d.start_with(events)
        d.wait_frames(4)
        text = d.text()
        for name, _ in layout.plan(cols, rows, 28, 6):
            assert TITLES[name] in text, (name, text)
        last = [e for e in events if isinstance(e, DecodeState) and e.seq_index == 0][-1]
        assert f"Cache: {last.cache_len}/{last.cache_max}" in text
        train = [e for e in events if isinstance(e, TrainingState)][-1]
        assert f"{train.reward_mean:+.3f}" in text
        assert all(wcwidth.wcswidth(line) == cols for line in d.screen().display)
    finally:
        d.close()


def test_keys_pause_stat_help_and_quit_to_plain_log(events):
    d = PtyDash(120, 40)
    try:
        d.start_with(events)
        d.wait_frames(3)
        assert "ATTENTION FLOW · focus" in d.text()
        d.key("s")
        d.wait_frames(3)
        assert "ATTENTION FLOW · max" in d.text()
        d.key("p")
        d.wait_frames(3)
        assert "PAUSED" in d.text()
        d.key("?")
        d.wait_frames(3)
        assert "HELP" in d.text()
        d.key("q")
        wait_until(lambda: d.tui.mode == "plain")
        assert d.tui.mode == "plain" and d.tui.quit
        d.tui.update_training(TrainingState(step=77, reward_mean=0.25, kl=0.1, loss=0.3, tokens_per_sec=9.0))
        wait_until(lambda: b"train step 77" in d.out)
        data = bytes(d.out)
        tail = data[data.rfind(b"\x1b[?1049l") + len(b"\x1b[?1049l"):]
        assert b"plain log follows" in tail and b"train step 77" in tail and b"\x1b" not in tail
    finally:
        d.close()


def test_resize_repaints_to_the_new_size(events):
    d = PtyDash(100, 30)
    try:
        d.start_with(events)
        d.wait_frames(3)
        clears = bytes(d.out).count(b"\x1b[2J")
        d.size(150, 45)
        d.wait_frames(3)
        assert bytes(d.out).count(b"\x1b[2J") == clears + 1  # cleared once, at the resize
        screen = d.screen()
        assert all(wcwidth.wcswidth(line) == 150 for line in screen.display)
        assert "KV CACHE MEMORY" in "\n".join(screen.display)
        d.wait_frames(2)
        assert bytes(d.out).count(b"\x1b[2J") == clears + 1  # and never again
    finally:
        d.close()


def test_no_color_keeps_cursor_moves_and_drops_colour(events, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    d = PtyDash(100, 30, depth=None)
    try:
        assert d.tui.depth == "none"
        d.start_with(events)
        d.wait_frames(3)
        data = bytes(d.out)
        sgr_params = {int(p) for m in re.findall(rb"\x1b\[([0-9;]*)m", data) for p in m.split(b";") if p}
        assert sgr_params and sgr_params <= {0, 1, 2, 4, 7}  # attributes only, no colour
        assert b"\x1b[1;1H" in data and b"\x1b[?1049h" in data
        assert "ATTENTION FLOW" in d.text()
    finally:
        d.close()


def test_dropped_events_and_fps_reach_the_header(events):
    d = PtyDash(200, 60, bus=Bus(capacity=8))
    try:
        for ev in events:  # before start: the subscription does not exist, nothing counted
            d.bus.publish(ev)
        d.tui.start()
        d.reading.clear()  # terminal stuck: frames pile up in the pty, writes block
        done = threading.Event()

        def produce():
            for _ in range(20):
                for ev in events:
                    d.tui.publish(ev)
            done.set()

        t = threading.Thread(target=produce)
        t.start()
        t.join(30)
        assert done.is_set(), "a producer was blocked by a stuck terminal"
        d.reading.set()
        deadline = time.monotonic() + 10
        while not re.search(r"fps \d", d.text()) and time.monotonic() < deadline:
            d.wait_frames(2)
        text = d.text()
        assert re.search(r"fps \d+\.\d", text), text
        assert int(re.search(r"dropped (\d+)", text).group(1)) == d.tui._sub.total_dropped > 0, text
    finally:
        d.close()


def test_queue_accepts_kind_payload_pairs():
    d = PtyDash(120, 40)
    try:
        d.tui.start()
        q = d.tui.queue
        q.put(("training", {"step": 5, "reward_mean": 0.875, "kl": 0.5, "loss": 0.1, "tokens_per_sec": 3.0}))
        q.put_nowait(("decode", DecodeState(step=1, token_text="hello", token_prob=0.5, cache_len=9, cache_max=64)))
        q.put(("credit", (["a", "b"], [0.5, -0.25])))
        d.tui.update_credit(["x"], [1.0], step=2)
        with pytest.raises(ValueError, match="credit"):
            q.put(("credit", 3))
        with pytest.raises(ValueError, match="unknown event kind"):
            q.put(("bogus", {}))
        with pytest.raises(ValueError, match="does not match"):
            q.put(("training", DecodeState()))
        d.wait_frames(3)
        text = unicodedata.normalize("NFC", d.text())
        assert "+0.875" in text and "Cache: 9/64" in text and '"hello"' in text
    finally:
        d.close()


def test_cli_help_and_bad_input(tmp_path, capsys):
    from vlmrl.utils.tui_live import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    helptext = capsys.readouterr().out
    for flag in ("--synthetic", "--seconds", "--record", "--attach", "--replay"):
        assert flag in helptext
    with pytest.raises(SystemExit) as e:
        main(["--synthetic", "--seconds", "0"])
    assert e.value.code == 2 and "--seconds must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--attach", "x.jsonl", "--record", "y.jsonl"])
    assert e.value.code == 2
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an event log\n")
    assert main(["--replay", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a vlmrl event log" in err
    assert main(["--replay", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_record_then_replay_without_tty_prints_the_run(tmp_path, capsys):
    from vlmrl.utils.tui_live import main

    log = tmp_path / "run.jsonl"
    assert main(["--synthetic", "--seconds", "3", "--record", str(log)]) == 0
    capsys.readouterr()
    assert main(["--replay", str(log)]) == 0
    out = capsys.readouterr().out
    assert "run qwen3vl-synthetic" in out and "train step 1 | reward" in out and "\x1b" not in out


def test_stop_never_hangs_on_a_stuck_terminal(events):
    d = PtyDash(200, 60)
    try:
        d.start_with(events)
        d.wait_frames(2)
        d.reading.clear()  # nobody reads the terminal any more (stalled ssh, Ctrl-S)
        for i in range(12):  # full repaints fill the pty buffer until the writer blocks
            d.size(200 - i, 60)
            time.sleep(0.1)
        frames = d.tui.frames
        time.sleep(0.3)
        assert d.tui.frames == frames, "the render thread should be stuck in a write"
        stopper = threading.Thread(target=d.tui.stop)
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive(), "stop() hung on a stuck terminal"
        assert termios.tcgetattr(d.slave)[3] & termios.ICANON  # input modes restored at once
        d.reading.set()  # the terminal moves again: the owed restore sequence follows
        deadline = time.monotonic() + 10
        while not bytes(d.out).endswith(b"\x1b[?1049l") and time.monotonic() < deadline:
            time.sleep(0.05)
        data = bytes(d.out)
        assert data.rfind(b"\x1b[?1049l") > data.rfind(b"\x1b[?2026h")
    finally:
        d.close()
