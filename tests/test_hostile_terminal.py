"""Hostile threads and terminals: a dying plain log says so, TERM=dumb and unknown TERMs,
grapheme clusters that tmux and wcwidth measure differently, long replays that still read keys."""
from __future__ import annotations

import os
import subprocess

import pytest

from vlmrl.instrument.events import DecodeState, TrainingState
from vlmrl.utils.tui.store import Store


# ------------------------------------------------------------------ threads and terminals

def test_a_dying_plain_log_says_so(capsys):
    from vlmrl.instrument.bus import Bus
    from vlmrl.utils.tui_live import LiveTUI

    r, w = os.pipe()
    try:
        bus = Bus()
        tui = LiveTUI(bus=bus, out_fd=w, in_fd=r)
        assert not tui.term.is_tty()

        def broken(event):
            raise RuntimeError("formatter bug")
        tui.plain.feed = broken
        tui.start()
        bus.publish(TrainingState(step=1))
        for _ in range(100):
            if tui.error:
                break
            __import__("time").sleep(0.05)
        tui.stop()
    finally:
        os.close(r)
        os.close(w)
    assert tui.error and "formatter bug" in tui.error
    assert "plain log stopped after an error" in capsys.readouterr().err


def test_term_dumb_gets_plain_lines_not_cursor_addressing(monkeypatch):
    import pty

    from vlmrl.utils.tui.term import Terminal

    master, slave = pty.openpty()
    try:
        monkeypatch.setenv("TERM", "dumb")
        assert not Terminal(out_fd=slave, in_fd=slave).is_tty()
        monkeypatch.setenv("TERM", "xterm")
        assert Terminal(out_fd=slave, in_fd=slave).is_tty()
    finally:
        os.close(master)
        os.close(slave)


def test_unknown_term_gets_16_colours():
    from vlmrl.utils.tui.theme import detect_color_depth

    assert detect_color_depth({"TERM": "no-such-terminal-xyz"}, terminfo=lambda t: None) == "16"


CLUSTERS = {
    "zwj-family": "\U0001F468\u200d\U0001F469\u200d\U0001F467",
    "flag": "\U0001F1FA\U0001F1F8",
    "hangul-filler": "\u3164",
    "halfwidth-hangul-filler": "\uffa0",
    "choseong-filler": "\u115f",
    "jungseong-filler": "\u1160",
}


@pytest.mark.skipif(not __import__("shutil").which("tmux"), reason="tmux binary not installed (CI installs it)")
def test_clusters_keep_the_row_geometry_in_tmux(tmp_path):
    """tmux puts the cursor where the canvas thinks the text ends, for each cluster that
    wcwidth and terminals measure differently."""
    import time

    from vlmrl.utils.tui.canvas import sanitize, text_width

    sock = f"vlmrl-hostile-{os.getpid()}"

    def tmux(*args):
        return subprocess.run(["tmux", "-u", "-L", sock, "-f", "/dev/null", *args], capture_output=True, text=True,
                              timeout=20, env=dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8")).stdout
    tmux("new-session", "-d", "-x", "80", "-y", "5", "sleep 60")
    try:
        got = {}
        for name, text in CLUSTERS.items():
            shown = sanitize(text)
            f = tmp_path / name
            f.write_text("X" + shown, encoding="utf-8")
            tmux("respawn-pane", "-k", "-t", "0", f"sh -c 'clear; cat {f}; sleep 30'")
            for _ in range(40):
                time.sleep(0.1)
                x = tmux("display-message", "-p", "-t", "0", "#{cursor_x}").strip()
                if x and x != "0":
                    break
            got[name] = (int(x) - 1, text_width(shown))
    finally:
        tmux("kill-server")
    assert all(a == b for a, b in got.values()), got


def test_a_long_replay_catches_up_over_frames_so_keys_are_read():
    """The dashboard applies at most a budget of events per frame: a huge log fills in over
    several frames (the footer says how far) instead of one frame that ignores q."""
    from vlmrl.utils.tui.replay import ReplayLog

    events = [DecodeState(step=i, seq_index=i % 3, token_text=f" t{i}", wall_time=1.0 + i) for i in range(5000)]
    log = ReplayLog(events)
    calls = 0
    while True:
        store = log.store_at(Store, budget=700)
        calls += 1
        if not log.catching_up:
            break
        assert "reading" in log.status()
    assert calls == 8 and "reading" not in log.status()
    full = ReplayLog(events).store_at(Store)
    assert {b: d.step for b, d in store.snapshot().decodes.items()} == {
        b: d.step for b, d in full.snapshot().decodes.items()} == {0: 4998, 1: 4999, 2: 4997}
