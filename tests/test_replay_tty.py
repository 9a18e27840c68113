"""`--replay` and `--attach` in a real pseudo-terminal, read back through pyte."""
import os
import sys

import pytest

from vlmrl.instrument.bus import Bus
from vlmrl.instrument.record import Recorder
from vlmrl.utils.tui.synthetic import SyntheticRun


def record_run(path, n=400):
    run = SyntheticRun(num_layers=6, num_heads=4, batch=1, gen_tokens=8, image_grid=(1, 4, 4))
    bus = Bus(capacity=10_000)
    with Recorder(bus, str(path), run_info=run.info):
        for ev in run.take(n):
            bus.publish(ev)


@pytest.mark.slow
def test_replay_in_a_terminal_steps_and_opens_the_deep_views(tmp_path, run_in_pty):
    path = tmp_path / "run.jsonl"
    record_run(path)
    t = run_in_pty([sys.executable, "-m", "vlmrl.utils.tui_live", "--replay", str(path), "--seconds", "60"])
    try:
        assert t.wait_for("REPLAY"), t.text()
        total = t.text().split("REPLAY ")[1].split()[0]  # "N/N" at the end of the log
        n = int(total.split("/")[1])
        assert total == f"{n}/{n}"
        t.send(b"\x1b[H")  # Home
        assert t.wait_for(f"REPLAY 0/{n}"), t.text()
        t.send(b"\x1b[C\x1b[C\x1b[C")  # three steps forward
        assert t.wait_for(f"REPLAY 3/{n}"), t.text()
        t.send(b"\x1b[D")
        assert t.wait_for(f"REPLAY 2/{n}"), t.text()
        t.send(b"\x1b[F")  # End
        assert t.wait_for(f"REPLAY {n}/{n}"), t.text()
        t.send(b"m")
        assert t.wait_for("ATTENTION MATRIX"), t.text()
        t.send(b"\x1b[B\x1b[B")  # arrows now move the matrix cursor, not the replay
        assert t.wait_for("[2,0]"), t.text()
        t.send(b"e")
        assert t.wait_for("TOKEN ATTENTION EXPLORER"), t.text()
        t.send(b"++")
        assert t.wait_for("threshold 0.052"), t.text()
        t.send(b"q")
        t.proc.wait(20)
        assert t.proc.returncode == 0
    finally:
        t.close()


@pytest.mark.slow
def test_attach_in_a_terminal_waits_for_the_file_follows_it_and_says_finished(tmp_path, run_in_pty):
    from vlmrl.instrument.events import RunEnd

    path = tmp_path / "growing.jsonl"
    run = SyntheticRun(num_layers=6, num_heads=4, batch=1, gen_tokens=8, image_grid=(1, 4, 4))
    t = run_in_pty([sys.executable, "-m", "vlmrl.utils.tui_live", "--attach", str(path), "--seconds", "60"])
    rec = None
    try:
        # the file does not exist yet: the screen names it, and nothing shape-specific shows
        assert t.wait_for(f"waiting for {path.name} in {path.parent}"), t.text()
        assert "2×28L" not in t.text() and "KV n/a" in t.text()
        bus = Bus(capacity=10_000)
        rec = Recorder(bus, str(path), run_info=run.info)
        assert t.wait_for("qwen3vl-synthetic"), t.text()
        assert "step n/a" in t.text() and f"waiting for {path.name}" not in t.text()  # no training step yet
        events = run.take(200)
        for ev in events:
            bus.publish(ev)
        training = [e for e in events if e.kind == "training"]
        last = training[-1]
        # the header shows the training step that was appended after attach started
        assert t.wait_for(f"step {last.step}"), t.text()
        assert "finished" not in t.text()
        bus.publish(RunEnd(step=last.step, reason="finished", seconds=12.0))
        rec.close()
        assert t.wait_for(f"finished at step {last.step}"), t.text()
        t.send(b"q")
        t.proc.wait(20)
        assert t.proc.returncode == 0
        t.pump(0.5)
        assert "run goes on" not in t.text()  # nothing of ours goes on after q in attach
    finally:
        if rec is not None:
            rec.close()
        t.close()


@pytest.mark.slow
def test_replay_of_a_real_run_opens_the_rl_views_and_steps_under_them(run_in_pty):
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    t = run_in_pty([sys.executable, "-m", "vlmrl.utils.tui_live", "--replay", os.path.join(data, "tiny_colors_seed0.jsonl"),
             "--compare", os.path.join(data, "tiny_colors_seed1_lr3e-4.jsonl"), "--seconds", "60"])
    try:
        assert t.wait_for("REPLAY"), t.text()
        n = int(t.text().split("REPLAY ")[1].split()[0].split("/")[1])
        t.send(b"c")
        assert t.wait_for("TRAINING CHARTS"), t.text()
        assert "tiny_colors_seed1_lr3e-4.jsonl" in t.screen.display[0]
        t.send(b"\x1b[D")  # the arrows still step the replay under the charts
        assert t.wait_for(f"REPLAY {n - 1}/{n}"), t.text()
        t.send(b"s")
        assert t.wait_for("EMA 0.6"), t.text()
        t.send(b"g")  # the group view, not Home
        assert t.wait_for("ROLLOUT GROUP"), t.text()
        assert f"REPLAY {n - 1}/{n}" in t.text()
        t.send(b"]s")
        assert t.wait_for("prompt 2/8"), t.text()
        assert t.wait_for("entropy (nats)"), t.text()
        t.send(b"q")
        t.proc.wait(20)
        assert t.proc.returncode == 0
    finally:
        t.close()
