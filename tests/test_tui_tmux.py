"""A real tmux session (a second, real terminal emulator) shows the demo and takes keys."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux binary not installed (CI installs it)")


class Tmux:
    def __init__(self, cmd: str, cols: int = 120, rows: int = 40):
        self.sock = f"vlmrl-test-{os.getpid()}-{time.monotonic_ns()}"
        self._tmux("new-session", "-d", "-x", str(cols), "-y", str(rows), cmd)

    def _tmux(self, *args) -> str:
        return subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null", *args], capture_output=True,
                              text=True, timeout=20).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "0")

    def keys(self, *keys) -> None:
        self._tmux("send-keys", "-t", "0", *keys)

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if needle in text:
                return text
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} never appeared; screen:\n{text}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=20)


@pytest.mark.slow
def test_demo_in_tmux_draws_the_dashboard_and_takes_keys():
    demo = (f"cd {shlex.quote(ROOT)} && PYTHONPATH={shlex.quote(ROOT)} {shlex.quote(sys.executable)} "
            f"-m vlmrl.utils.tui_live --synthetic --seconds 10; echo DEMO-EXITED rc=$?; sleep 30")
    t = Tmux(f"sh -c {shlex.quote(demo)}")
    try:
        screen = t.wait_for("KV CACHE MEMORY")
        for title in ("DECODE LIVE", "COMPUTATION FLOW", "ATTENTION FLOW", "VISION INJECTION", "mRoPE",
                      "TOKEN CREDIT", "KV CACHE MEMORY", "SYNTHETIC"):
            assert title in screen, (title, screen)
        lines = screen.splitlines()
        assert len(lines) <= 40 and all(len(line) <= 120 for line in lines)
        assert "ATTENTION FLOW · focus" in screen
        t.keys("s")
        t.wait_for("ATTENTION FLOW · max", timeout=5)
        t.keys("q")  # leave the dashboard: the run goes on as a plain log on the normal screen
        screen = t.wait_for("plain log follows", timeout=10)
        assert "\x1b" not in screen
        screen = t.wait_for("DEMO-EXITED rc=0", timeout=40)
        assert "train step" in screen
    finally:
        t.close()


@pytest.mark.slow
def test_live_demo_in_tmux_trains_in_a_child_and_ends_with_a_summary(tmp_path):
    """The real demo: the dashboard waits for the child's log, shows what compiles while it
    ticks, follows the run to its end record and prints the one-line summary."""
    log = tmp_path / "demo.jsonl"
    env = f"PYTHONPATH={shlex.quote(ROOT)} XDG_CACHE_HOME={shlex.quote(str(tmp_path / 'xdg'))}"
    demo = (f"cd {shlex.quote(str(tmp_path))} && {env} {shlex.quote(sys.executable)} -m vlmrl.utils.tui_live "
            f"--steps 2 --seed 1 --record {shlex.quote(str(log))}; echo DEMO-EXITED rc=$?; sleep 60")
    t = Tmux(f"sh -c {shlex.quote(demo)}")
    try:
        screen = t.wait_for("status compiling rollout", timeout=300)
        assert "LIVE" in screen and "2×28L" not in screen  # no guessed 2B shape meanwhile
        screen = t.wait_for("finished at step 1 — q leaves", timeout=600)
        time.sleep(4)  # more than the old 3 s linger: the final screen stays until q
        assert "q leaves" in t.screen() and "DEMO-EXITED" not in t.screen()
        t.keys("q")
        screen = t.wait_for("DEMO-EXITED rc=0", timeout=60)
        assert "demo: 2/2 steps on colors, final reward" in screen.replace("\n", "")
        assert str(log) in screen.replace("\n", "")
    finally:
        t.close()
    assert log.exists() and '"kind":"run_end"' in log.read_text().replace(" ", "")
