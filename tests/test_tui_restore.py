"""The terminal is restored on every way out, checked in a real pseudo-terminal.

A child process runs the dashboard on the slave side of a pty; we read what it wrote and,
after it ends, the slave's termios modes. Paths: normal stop, exception, SIGINT, SIGTERM,
crash of the render thread (the run goes on), and a dashboard started off the main thread
(no signal handlers there: atexit must do it).
"""
from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = textwrap.dedent("""
    import sys, time, threading
    from vlmrl.instrument.bus import Bus
    from vlmrl.utils.tui.synthetic import SyntheticRun
    from vlmrl.utils.tui_live import LiveTUI
    bus = Bus()
    events = SyntheticRun(num_layers=6, num_heads=4, gen_tokens=8, seed=1).take(40)
    def feed():
        for ev in events:
            bus.publish(ev)
""")

SCRIPTS = {
    "normal": """
        with LiveTUI(bus=bus, fps=30):
            feed(); time.sleep(0.6)
        print("AFTER-STOP")
    """,
    "exception": """
        with LiveTUI(bus=bus, fps=30):
            feed(); time.sleep(0.6)
            raise RuntimeError("boom in the training loop")
    """,
    "sigint": """
        tui = LiveTUI(bus=bus, fps=30).start()
        feed()
        while True:
            time.sleep(0.05)
    """,
    "sigterm": """
        tui = LiveTUI(bus=bus, fps=30).start()
        feed()
        while True:
            time.sleep(0.05)
    """,
    "render_crash": """
        from vlmrl.utils.tui.layout import render_screen
        # The panel breaks only after frames were drawn: a frame whose diff is empty writes
        # nothing, so a count of screen() calls alone does not say that frames went out.
        broken = [False]
        def screen(*a):
            if broken[0]:
                raise ZeroDivisionError("panel bug")
            return render_screen(*a)
        tui = LiveTUI(bus=bus, fps=30, screen=screen, summary_every=0.2).start()
        feed(); time.sleep(1.0)
        broken[0] = True
        bus.publish(events[-1])
        time.sleep(0.5)  # the render thread meets the broken panel within a frame or two
        print("RUN-CONTINUES")
        time.sleep(0.3)
        tui.stop()
    """,
    "thread_exception": """
        box = []
        t = threading.Thread(target=lambda: box.append(LiveTUI(bus=bus, fps=30).start()))
        t.start(); t.join()
        feed(); time.sleep(0.6)
        raise RuntimeError("unhandled, dashboard started off the main thread")
    """,
}


def run_in_pty(code: str, signal_after_frame=None, cols=100, rows=30, timeout=30.0):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", PYTHONPATH=ROOT)
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=ROOT, start_new_session=True)
    out = b""
    sent = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if signal_after_frame is not None and not sent and out.count(b"\x1b[?2026h") >= 2:
                proc.send_signal(signal_after_frame)
                sent = True
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                out += data
            elif proc.poll() is not None:
                # drain what is left
                while select.select([master], [], [], 0.05)[0]:
                    try:
                        data = os.read(master, 65536)
                    except OSError:
                        data = b""
                    if not data:
                        break
                    out += data
                break
        else:
            proc.kill()
            pytest.fail(f"child did not finish; output tail: {out[-500:]!r}")
        proc.wait(5)
        attrs = termios.tcgetattr(slave)
    finally:
        os.close(master)
        os.close(slave)
    return proc.returncode, out, attrs


def assert_restored(out: bytes, attrs, enters: int = 1) -> None:
    assert out.count(b"\x1b[?1049h") == enters, "alt screen entered once per session"
    leave = out.rfind(b"\x1b[?1049l")
    assert leave > out.rfind(b"\x1b[?2026h"), "left the alt screen after the last frame"
    assert out.rfind(b"\x1b[?25h") > out.rfind(b"\x1b[?25l"), "cursor shown again"
    assert out.rfind(b"\x1b[?7h") > out.rfind(b"\x1b[?7l"), "autowrap back on"
    lflag = attrs[3]
    assert lflag & termios.ECHO and lflag & termios.ICANON, "echo and canonical input restored"


@pytest.mark.parametrize("path", ["normal", "exception", "sigint", "sigterm", "render_crash", "thread_exception"])
def test_terminal_restored(path):
    sig = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}.get(path)
    code = PRELUDE + textwrap.dedent(SCRIPTS[path])
    rc, out, attrs = run_in_pty(code, signal_after_frame=sig)
    assert out.count(b"\x1b[?2026h") >= 2, f"dashboard drew frames: {out[-400:]!r}"
    assert_restored(out, attrs)
    tail = out[out.rfind(b"\x1b[?1049l"):]
    if path == "normal":
        assert rc == 0 and b"AFTER-STOP" in tail
    elif path in ("exception", "thread_exception"):
        assert rc == 1 and b"RuntimeError" in tail  # the traceback is readable on the normal screen
    elif path == "sigint":
        assert rc in (-signal.SIGINT, 130, 1) and b"KeyboardInterrupt" in tail
    elif path == "sigterm":
        assert rc == 128 + signal.SIGTERM
    elif path == "render_crash":
        assert rc == 0
        assert out.count(b"vlmrl dashboard stopped after an error") == 1, out[-800:]
        assert b"ZeroDivisionError" in tail and b"RUN-CONTINUES" in tail
        assert b"plain log follows" in tail  # the plain log took over
        assert b"\x1b" not in tail[len(b"\x1b[?1049l"):], "no escape bytes after the restore"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc to see a stopped process")
def test_ctrl_z_gives_the_terminal_back_and_fg_repaints():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", PYTHONPATH=ROOT)
    code = PRELUDE + textwrap.dedent(SCRIPTS["sigterm"])
    # its own process group in our session: not orphaned, so a stop signal really stops it
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave, env=env,
                            cwd=ROOT, process_group=0)
    out = bytearray()

    def pump(until, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            if select.select([master], [], [], 0.05)[0]:
                try:
                    out.extend(os.read(master, 65536))
                except OSError:
                    break
        return until()

    try:
        assert pump(lambda: out.count(b"\x1b[?2026h") >= 2)
        proc.send_signal(signal.SIGTSTP)
        assert pump(lambda: _state(proc.pid) == "T"), "process did not stop"
        pump(lambda: False, timeout=0.3)
        assert_restored(bytes(out), termios.tcgetattr(slave))  # shell gets a sane terminal
        n = len(out)
        proc.send_signal(signal.SIGCONT)
        assert pump(lambda: out.count(b"\x1b[?1049h") == 2 and out[n:].count(b"\x1b[?2026l") >= 2)
        assert b"\x1b[2J" in out[n:]  # back in the foreground: cleared and fully repainted
        lflag = termios.tcgetattr(slave)[3]
        assert not lflag & termios.ICANON  # keys read one by one again
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        pump(lambda: False, timeout=0.3)
        assert proc.returncode == 128 + signal.SIGTERM
        data = bytes(out)
        assert_restored(data, termios.tcgetattr(slave), enters=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
