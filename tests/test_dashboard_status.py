"""The header's run status agrees with its step: while paused both stay at the paused moment
(the status is no longer live beside a frozen step), and the demo's count of updates done
names the 0-based steps it counts."""
from __future__ import annotations

from types import SimpleNamespace

from conftest import scenario
from vlmrl.instrument.events import TrainingState
from vlmrl.utils.tui import layout
from vlmrl.utils.tui.cli import Follow, _eta
from vlmrl.utils.tui.dashboard_loop import DashboardLoop
from vlmrl.utils.tui.palette import COLOR


class _Sub:
    total_dropped = 0

    @staticmethod
    def drain():
        return []


def _loop(store):
    tui = SimpleNamespace(term=None, _sub=_Sub(), replay=None, screen=None, compare=None, flash_hz=5.0,
                          display_layers=6, depth="truecolor", fps=20.0, source="LIVE", status="",
                          diagnostics=SimpleNamespace(notice=lambda: None), frame_ms=0.0)
    loop = DashboardLoop(tui)
    loop.store = store
    return loop, tui


def _header(loop, now):
    loop.fold_events(now)
    state = loop.state_to_show(now)
    return layout.render_screen(state, loop.view, 200, 50, now, COLOR).text().splitlines()[0]


def test_while_paused_the_status_stays_with_the_frozen_step():
    store = scenario()  # its newest update is step 7
    loop, tui = _loop(store)
    tui.status = "8 of 400 updates done (steps 0-7)"
    assert "8 of 400" in _header(loop, 1.0) and "step 7" in _header(loop, 1.0)
    loop.apply_keys(["p"])
    assert "8 of 400" in _header(loop, 2.0)
    store.apply(TrainingState(step=8, reward_mean=0.6, reward_std=0.1, kl=0.01, loss=0.3))
    tui.status = "9 of 400 updates done (steps 0-8)"
    head = _header(loop, 3.0)
    assert "8 of 400" in head and "9 of 400" not in head and "step 7" in head
    loop.apply_keys(["p"])
    head = _header(loop, 4.0)
    assert "9 of 400" in head and "step 8" in head


def test_updates_done_names_the_steps_it_counts():
    seen = Follow()
    seen.training = TrainingState(step=266, wall_time=100.0)
    text = _eta(seen, 400, [0, 0.0])
    assert text.startswith("267 of 400 updates done (steps 0-266)") and "s left" in text
    seen.training = TrainingState(step=399, wall_time=200.0)
    assert _eta(seen, 400, [0, 0.0]) == "400 of 400 updates done (steps 0-399)"


HOLD_SCRIPT = """
from vlmrl.instrument.bus import Bus
from vlmrl.instrument.events import RunEnd, TrainingState
from vlmrl.utils.tui.cli import hold_final_screen
from vlmrl.utils.tui_live import LiveTUI
bus = Bus()
tui = LiveTUI(bus=bus, fps=20).start()
bus.publish(TrainingState(step=5, reward_mean=0.75, reward_std=0.1, kl=0.01, loss=0.2))
bus.publish(RunEnd(step=5, reason="finished"))
hold_final_screen(tui)
tui.stop()
print("LEFT-AFTER-Q", tui.quit)
"""


def test_after_the_run_ends_the_dashboard_stays_until_q(run_in_pty):
    """In a terminal (a pty, keys on stdin) the final screen stays, saying q leaves; q ends it
    without handing over to a plain log (no run goes on)."""
    import sys
    t = run_in_pty([sys.executable, "-c", HOLD_SCRIPT])
    try:
        assert t.wait_for("finished at step 5 — q leaves"), t.text()
        assert "reward +0.750" in t.text()
        t.pump(1.5)
        assert t.proc.poll() is None and "q leaves" in t.text()  # still up, no key pressed
        t.send(b"q")
        assert t.wait_for("LEFT-AFTER-Q True"), t.text()
        t.proc.wait(20)
        assert t.proc.returncode == 0 and "plain log follows" not in t.text()
    finally:
        t.close()


def test_without_a_dashboard_holding_the_final_screen_returns_at_once():
    """Plain lines (no terminal): nothing to hold, nothing waits for a key."""
    import io
    import os
    from vlmrl.instrument.bus import Bus
    from vlmrl.utils.tui.cli import hold_final_screen
    from vlmrl.utils.tui_live import LiveTUI
    r, w = os.pipe()
    try:
        tui = LiveTUI(bus=Bus(), out_fd=w, plain_stream=io.StringIO()).start()
        assert tui.mode == "plain"
        hold_final_screen(tui)  # returns: the plain log goes on as before
        tui.stop()
    finally:
        os.close(r)
        os.close(w)
