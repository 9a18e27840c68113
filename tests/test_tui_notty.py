"""No TTY (a batch job's log, `| tee`): not one escape byte, plain lines instead."""
from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import time

from vlmrl.instrument.bus import Bus
from vlmrl.instrument.events import DecodeState, RunInfo, TrainingState
from vlmrl.utils.tui.plainlog import PlainLog
from vlmrl.utils.tui.synthetic import SyntheticRun
from vlmrl.utils.tui_live import LiveTUI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_piped_writes_plain_lines_only():
    env = dict(os.environ, TERM="xterm-256color", COLORTERM="truecolor", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "vlmrl.utils.tui_live", "--synthetic", "--seconds", "4"],
                          cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"\x1b" not in proc.stdout and b"\x1b" not in proc.stderr
    text = proc.stdout.decode()
    assert "run qwen3vl-synthetic" in text
    assert "train step 1 | reward" in text  # one line per TrainingState


def test_live_tui_on_a_pipe_never_writes_escapes(tmp_path):
    r, w = os.pipe()
    sink = io.StringIO()
    bus = Bus()
    run = SyntheticRun(num_layers=4, num_heads=4, gen_tokens=5, seed=2)
    tui = LiveTUI(bus=bus, out_fd=w, plain_stream=sink, summary_every=0.0)
    tui.start()
    try:
        assert tui.mode == "plain"
        for ev in run.take(30):
            if isinstance(ev, DecodeState):  # hostile token text must stay inert
                ev = dataclasses.replace(ev, token_text="\x1b]52;c;Zm9v\x07\x1b[2J\x9b1m")
            tui.publish(ev)
        tui.update_training(TrainingState(step=99, reward_mean=0.5, kl=0.01, loss=0.2, tokens_per_sec=100.0))
        deadline = time.monotonic() + 5
        while "train step 99" not in sink.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        tui.stop()
    os.close(w)
    raw = os.read(r, 1 << 20)
    os.close(r)
    assert raw == b""  # the pipe got nothing at all: the plain log went to its stream
    out = sink.getvalue()
    assert "train step 99" in out and "decode step" in out
    assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out
    assert "␛]52;c;Zm9v" in out  # shown, visibly, not executed


def test_plain_log_formats_missing_and_bad_numbers():
    sink = io.StringIO()
    log = PlainLog(sink, clock=lambda: 0.0)
    log.feed(RunInfo(model_name="m\x1b[31m"))
    log.feed(TrainingState(step=3, reward_mean=float("nan"), reward_std=0.1, kl=0.0, loss=1.0, tokens_per_sec=5.0))
    out = sink.getvalue()
    assert "\x1b" not in out and "m␛[31m" in out
    assert "train step 3 | reward nan±0.100" in out


def test_dashboard_never_imports_jax():
    code = ("import sys\n"
            "from vlmrl.utils.tui_live import main\n"
            "import vlmrl.utils.tui.term, vlmrl.utils.tui.frame, vlmrl.utils.tui.theme, vlmrl.utils.tui.synthetic\n"
            "assert main(['--synthetic', '--seconds', '1']) == 0\n"
            "bad = sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'jaxlib', 'flax')))\n"
            "print('JAX-MODULES', bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "JAX-MODULES []" in proc.stdout


def test_only_process_zero_draws_or_logs():
    sink = io.StringIO()
    bus = Bus()
    tui = LiveTUI(bus=bus, plain_stream=sink, summary_every=0.0, process_index=1)
    tui.start()
    try:
        assert tui.mode == "off" and not tui.running
        tui.update_training(TrainingState(step=1))  # still a cheap, non-blocking no-op publish
    finally:
        tui.stop()
    assert sink.getvalue() == ""


def test_update_calls_reach_the_bus_and_a_subclass_override_is_kept():
    """update_decode/update_training/publish are the bus's publisher itself (no wrapper
    frame on the producer's path), unless a subclass overrides one."""
    bus = Bus()
    sub = bus.subscribe("t")
    tui = LiveTUI(bus=bus, plain_stream=io.StringIO())
    tui.update_decode(DecodeState(step=1))
    tui.update_training(TrainingState(step=2))
    tui.publish(DecodeState(step=3))
    assert [e.step for e in sub.drain()] == [1, 2, 3]

    seen = []

    class Filtered(LiveTUI):
        def update_decode(self, state):
            seen.append(state.step)
            if state.step % 2:
                super().update_decode(state)

    mine = Filtered(bus=bus, plain_stream=io.StringIO())
    for step in (4, 5):
        mine.update_decode(DecodeState(step=step))
    assert seen == [4, 5] and [e.step for e in sub.drain()] == [5]


def test_plain_log_prints_the_run_once_compiling_once_and_the_real_decode_rate():
    """A run republishes RunInfo every second while it compiles: one run line, one
    compiling line, one line when the first update lands; the decode rate comes from the
    events' step keys and clocks (taps emit every `stride`-th step), not from counting events."""
    from vlmrl.instrument.events import RunEnd

    sink = io.StringIO()
    now = [0.0]
    log = PlainLog(sink, summary_every=10.0, clock=lambda: now[0])
    info = RunInfo(model_name="tiny-rl", num_layers=2, num_heads=4, batch=4)
    log.feed(info)
    for s in range(5):
        log.feed(dataclasses.replace(info, status="compiling rollout (prefill + decode loop)", status_seconds=float(s)))
    log.feed(dataclasses.replace(info, status="compiling PPO update (score + update)", status_seconds=5.0))
    # one generation of 4 rows; emits every 4th step, 0.01 s apart: 4 rows x 4 tokens / 0.01 s
    for k, step in enumerate(range(0, 17, 4)):
        for row in range(4):
            log.feed(DecodeState(step=step, seq_index=row, generation=1, batch_size=4, phase="decode",
                                 wall_time=100.0 + 0.01 * k))
    now[0] = 10.0
    log.tick()
    log.feed(TrainingState(step=0, reward_mean=0.5, tokens_per_sec=100.0))
    # a tick of the status published just before the update's line, arriving after it
    log.feed(dataclasses.replace(info, status="compiling PPO update (score + update)", status_seconds=6.0))
    log.feed(dataclasses.replace(info, status="", status_seconds=None))
    now[0] = 30.0
    log.tick()  # no decode event since the last summary: no line
    log.feed(RunEnd(step=0, reason="finished", seconds=12.5))
    lines = sink.getvalue().splitlines()
    assert sum("run tiny-rl" in ln for ln in lines) == 1
    assert sum("compiling" in ln for ln in lines) == 1
    assert any(ln.endswith("compiling rollout (prefill + decode loop) ...") for ln in lines)
    assert sum("compiled" in ln for ln in lines) == 1
    done = [ln for ln in lines if "compiled after 5 s; training" in ln]
    assert len(done) == 1 and lines.index(done[0]) < next(i for i, ln in enumerate(lines) if "train step 0" in ln)
    decode = [ln for ln in lines if "decode step" in ln]
    # 4 first tokens + 4 rows x 16 steps = 68 tokens over 0.04 s of event time
    assert len(decode) == 1 and "1700.0 tok/s" in decode[0], decode
    assert lines[-1].endswith("run finished | last step 0 | 12.5 s")
