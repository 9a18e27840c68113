"""One diagnostics route: while the dashboard owns the screen, warnings and log records
become a footer notice (seen through a terminal emulator) and reach stderr, in order,
once the terminal is restored; usage errors have their own type."""
from __future__ import annotations

import io
import logging
import os
import warnings

import pyte
import pytest

from vlmrl.errors import UsageError
from vlmrl.instrument.bus import Bus, Subscription
from vlmrl.utils.tui.diagnostics import Diagnostics
from vlmrl.utils.tui.frame import FrameEncoder
from vlmrl.utils.tui.synthetic import SyntheticRun
from vlmrl.utils.tui_live import LiveTUI


def test_held_while_captured_then_written_in_order_on_release():
    d = Diagnostics(held=2)
    before = warnings.showwarning
    d.capture()
    warnings.warn("first", RuntimeWarning)
    logging.getLogger("vlmrl.test").warning("second %d", 2)
    logging.getLogger("vlmrl.test").info("not a warning")
    warnings.warn("third", UserWarning)
    assert d.count == 3 and d.notice().startswith("3 warnings") and "third" in d.notice()
    out = io.StringIO()
    d.release(out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "vlmrl dashboard: 1 earlier warning(s) not kept"
    assert "WARNING vlmrl.test: second 2" == lines[1] and lines[2].endswith("UserWarning: third")
    assert warnings.showwarning is before
    assert not any(isinstance(h, logging.Handler) and h.__class__.__name__ == "_Handler"
                   for h in logging.getLogger().handlers)


def test_a_warning_during_the_dashboard_is_a_footer_notice_then_stderr(capfd):
    master, slave = os.openpty()
    import fcntl
    import struct
    import termios
    import time

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    os.set_blocking(master, False)
    bus = Bus()
    tui = LiveTUI(bus=bus, out_fd=slave, in_fd=slave, depth="256", fps=50)
    out = bytearray()

    def pump(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                out.extend(os.read(master, 65536))
            except BlockingIOError:
                time.sleep(0.02)

    try:
        tui.start()
        for ev in SyntheticRun(seed=2, gen_tokens=6).take(30):
            tui.publish(ev)
        pump(0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            tui.diagnostics.capture()  # start() captured already: idempotent
            warnings.warn("checkpoint looks odd", UserWarning)
        pump(1.0)
        screen = pyte.Screen(160, 40)
        data = bytes(out)
        pyte.ByteStream(screen).feed(data[data.rfind(b"\x1b[2J") - 8:])
        footer = screen.display[-1]
        assert "1 warning" in footer and "checkpoint looks odd" in footer, footer
        assert "checkpoint looks odd" not in capfd.readouterr().err  # held while drawing
    finally:
        tui.stop()
        os.close(master)
        os.close(slave)
    err = capfd.readouterr().err
    assert "UserWarning: checkpoint looks odd" in err


def test_usage_errors_have_their_own_type():
    with pytest.raises(UsageError, match="fps"):
        LiveTUI(fps=0)
    with pytest.raises(UsageError, match="capacity"):
        Subscription("x", 0)
    with pytest.raises(UsageError, match="colour depth"):
        FrameEncoder("millions")
    with pytest.raises(UsageError, match="LiveTUI.queue"):
        LiveTUI(bus=Bus()).queue.put(42)
    assert issubclass(UsageError, ValueError)  # callers catching ValueError keep working
