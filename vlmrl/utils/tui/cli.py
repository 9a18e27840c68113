"""`python -m vlmrl.utils.tui_live`: the demo (live tiny-model training or --synthetic) and
the viewer of recorded runs (--attach, --replay).

Neither JAX nor anything of `vlmrl.core` is imported here (the dashboard sits below the
trainer). The live demo runs `python -m vlmrl.core.train --record LOG` as a child process
and attaches to LOG as `--attach` does from another tmux pane, so every demo run also
exercises the path a user follows a remote run by. `main` takes the dashboard class from
`tui_live` (its caller), so the two modules do not import each other.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

from vlmrl.envs.shapes import ENVS
from vlmrl.instrument.bus import Bus
from vlmrl.instrument.events import RunEnd, RunInfo, TrainingState
from vlmrl.instrument.record import RecordError, check_record_path
from vlmrl.utils.tui.attach import LogFollower, attach_events
from vlmrl.utils.tui.replay import LogFormatError, ReplayLog

DEMO_STEPS = 60  # colors learns in about this many updates (README: 62 to a 0.9 mean reward)
LINGER_S = 3.0  # without a keyboard the demo keeps "finished" on screen this long before its summary
HOLD_STATUS = "q leaves"  # the header after "finished at step N" while the demo holds the final screen
CHILD_STOP_S = 30.0  # after SIGINT, how long the training child may take to write its end record


def _run_synthetic(args, bus: Bus, live_tui, note: str = "") -> int:
    from vlmrl.utils.tui.synthetic import SyntheticRun, drive

    run = SyntheticRun(seed=args.seed, prefill_walk=8)
    recorder = _recorder(args, bus, run.info)
    tui = live_tui(num_layers=run.L, num_heads=run.H, bus=bus, fps=args.fps, source="SYNTHETIC")
    if note:
        print(note, file=sys.stderr)
    t0 = time.monotonic()
    tui.start()
    try:
        drive(bus.publish, seconds=args.seconds, run=run)
        bus.publish(RunEnd(step=None, reason="finished", seconds=round(time.monotonic() - t0, 3)))
    finally:
        tui.stop()
        if recorder is not None:
            recorder.close()
    return 0


def _recorder(args, bus: Bus, run_info=None):
    if not args.record:
        return None
    from vlmrl.instrument.record import Recorder

    return Recorder(bus, args.record, run_info=run_info, force=args.force)


class Follow:
    """What following a log saw: the newest TrainingState, the RunEnd, events passed on."""

    def __init__(self):
        self.training: Optional[TrainingState] = None
        self.end: Optional[RunEnd] = None
        self.events = 0

    def take(self, ev, tui) -> None:
        if isinstance(ev, TrainingState) and (self.training is None or ev.step >= self.training.step):
            self.training = ev
        elif isinstance(ev, RunEnd):
            self.end = ev
        elif isinstance(ev, RunInfo) and self.end is not None and not ev.status:
            self.end = None  # the log was rewritten by a new run
        self.events += 1
        if self.events == 1:
            tui.status = ""  # the run speaks for itself from its first event on


def _comparison(args):
    """The --compare run's training history as the charts overlay it (None without the
    flag); raises OSError/LogFormatError for a file that is not a readable log."""
    if not args.compare:
        return None
    from vlmrl.instrument.log_read import read_log
    from vlmrl.utils.tui.state import Comparison
    from vlmrl.utils.tui.store import Store

    _, events, _ = read_log(args.compare)
    store = Store()
    for ev in events:  # through the store: the same checks the shown run's events get
        store.apply(ev)
    return Comparison(os.path.basename(args.replay or args.attach), os.path.basename(args.compare),
                      store.snapshot().history)


def _compare_or_exit(args):
    """(Comparison or None, None), or (None, 2) after saying why the file cannot be read."""
    try:
        return _comparison(args), None
    except (OSError, LogFormatError) as exc:
        print(f"--compare {args.compare}: {exc}", file=sys.stderr)
        return None, 2


def _waiting_for(path: str) -> str:
    """"waiting for NAME in DIR": a narrow header cuts the directory before the file's name."""
    head, name = os.path.split(path)
    return f"waiting for {name}" + (f" in {head}" if head else "")


def _run_attach(args, bus: Bus, live_tui) -> int:
    compare, failed = _compare_or_exit(args)
    if failed:
        return failed
    follower = LogFollower(args.attach)
    try:
        first = follower.poll()  # a path that is not a log fails here, before the screen is taken
    except LogFormatError as exc:
        follower.close()
        print(f"--attach {args.attach}: {exc}", file=sys.stderr)
        return 2
    source = lambda: "ATTACH" + _skipped(follower.stats)  # noqa: E731
    tui = live_tui(bus=bus, fps=args.fps, source=source, quit_ends=True, compare=compare).start()
    tui.status = _waiting_for(args.attach)
    if tui.mode == "plain":
        print(f"waiting for {args.attach}", flush=True)
    end = None if args.seconds is None else time.monotonic() + args.seconds
    seen = Follow()
    # without a screen there is nothing to look at after the end record: stop there
    done = lambda: (tui.quit or (end is not None and time.monotonic() >= end)  # noqa: E731
                    or (tui.mode == "plain" and seen.end is not None))
    try:
        for ev in first:
            seen.take(ev, tui)
            bus.publish(ev)
        for ev in attach_events(args.attach, stop=done, poll=0.05, follower=follower):
            seen.take(ev, tui)
            bus.publish(ev)
    except (OSError, LogFormatError) as exc:
        tui.stop()
        print(f"--attach {args.attach}: {exc}", file=sys.stderr)
        return 2
    finally:
        tui.stop()
    _report_skipped(args.attach, follower.stats)
    return 1 if tui.error else 0


def _skipped(stats) -> str:
    return f"  {stats.skipped} bad lines skipped" if stats.skipped else ""


def _report_skipped(path: str, stats) -> None:
    if stats.skipped:
        print(f"{path}: {stats.skipped} bad lines skipped (first: {stats.first_error or 'a cut-off last line'})",
              file=sys.stderr)


def _run_replay(args, live_tui) -> int:
    try:
        log = ReplayLog.stream(args.replay)  # the header now; the dashboard reads the events as it draws
    except (OSError, LogFormatError) as exc:
        print(f"--replay {args.replay}: {exc}", file=sys.stderr)
        return 2
    try:
        compare, failed = _compare_or_exit(args)
        if failed:
            return failed
        tui = live_tui(bus=Bus(), fps=args.fps, replay=log, source="REPLAY", compare=compare)
        if not tui.term.is_tty():  # nothing to navigate: print the run as plain lines
            log.load(None)
            for ev in log.events:
                tui.plain.feed(ev)
            _report_skipped(args.replay, log.stats)
            return 0
        tui.start()
        try:
            tui.wait(args.seconds)
        finally:
            tui.stop()
    finally:
        log.close()
    _report_skipped(args.replay, log.stats)
    return 1 if tui.error else 0


# ------------------------------------------------------------------ the live demo

def _demo_log(args) -> str:
    """--record, else a new runs/demo-<time>.jsonl under the current directory."""
    if args.record:
        return args.record
    os.makedirs("runs", exist_ok=True)
    return os.path.join("runs", time.strftime("demo-%Y%m%d-%H%M%S.jsonl"))


def _stop_child(child: subprocess.Popen) -> None:
    """Ask the training child to stop (SIGINT: it writes its end record), then insist."""
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGINT)
    try:
        child.wait(CHILD_STOP_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _eta(seen: Follow, steps: int, t_first: Optional[list]) -> str:
    """The header's status while training: updates done and the time the rest take at the pace
    so far. The header's `step` counts from 0, the updates done from 1: the status names the
    steps it counts, so "267 of 400 updates done (steps 0-266)" sits beside "step 266"."""
    t = seen.training
    if t is None or t_first is None:
        return ""
    done, left = t.step + 1, steps - 1 - t.step
    count = f"{done} of {steps} updates done (steps 0-{t.step})"
    if left <= 0 or t.step <= t_first[0]:
        return count
    pace = (t.wall_time - t_first[1]) / (t.step - t_first[0])
    return f"{count} · about {left * pace:.0f} s left"


def _run_training(args, live_tui) -> int:
    """Train the tiny Qwen3-VL in a child process and watch its log live from the first second."""
    log = _demo_log(args)
    cmd = [sys.executable, "-m", "vlmrl.core.train", "--env", args.env, "--steps", str(args.steps),
           "--seed", str(args.seed), "--record", log, "--quiet"] + (["--force"] if args.force else [])
    print(f"vlmrl demo: {args.steps} PPO steps of the tiny Qwen3-VL on {args.env}. The first step compiles "
          f"(up to a minute; a second run loads the compilation cache), the header then counts the updates and "
          f"the time left. q leaves the dashboard, Ctrl-C stops the run; once it ends, the final screen stays "
          f"until q.", flush=True)
    out = tempfile.TemporaryFile()
    t0 = time.monotonic()
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    bus = Bus(capacity=1000)
    tui = live_tui(bus=bus, fps=args.fps, source="LIVE").start()
    tui.status = f"starting the training process (pid {child.pid}); {_waiting_for(log)}"
    seen, t_first, ended_at, stopping, quiet_since = Follow(), None, None, [], [None]
    deadline = None if args.seconds is None else t0 + args.seconds
    hold = _stdin_is_tty()  # a keyboard to press q with: the final screen stays until q

    def done() -> bool:
        now = time.monotonic()
        if deadline is not None and now >= deadline and not stopping:  # --seconds: ask the run to end
            stopping.append(threading.Thread(target=_stop_child, args=(child,), daemon=True))
            stopping[0].start()
        if seen.end is not None:
            linger = LINGER_S if tui.mode == "dashboard" and not hold else 0.0
            return ended_at is not None and now - ended_at >= linger
        if child.poll() is not None:  # ended without an end record (killed): wait for the last lines
            quiet_since[0] = quiet_since[0] or now
            return now - quiet_since[0] >= 1.0
        return False

    try:
        for ev in attach_events(log, stop=done, poll=0.05):
            seen.take(ev, tui)
            bus.publish(ev)
            if isinstance(ev, TrainingState):
                t_first = t_first or [ev.step, ev.wall_time]
                tui.status = _eta(seen, args.steps, t_first)
            if seen.end is not None and ended_at is None:
                ended_at = time.monotonic()
                tui.status = HOLD_STATUS if hold else ""  # "finished at step N" says the rest
        if seen.end is not None and hold:
            hold_final_screen(tui)
    except KeyboardInterrupt:  # Ctrl-C reached the child too (same terminal): it ends its log
        seen.end = seen.end or RunEnd(step=None, reason="interrupted")
    except (OSError, LogFormatError) as exc:
        tui.stop()
        print(f"demo log {log}: {exc}", file=sys.stderr)
        return 2
    finally:
        tui.stop()
        _stop_child(child)
    rc = child.wait()
    if rc != 0 and seen.end is None:
        out.seek(0)
        tail = out.read()[-4000:].decode("utf-8", "replace").strip()
        print(tail or f"training process exited with code {rc}", file=sys.stderr)
        return rc if rc in (1, 2) else 1
    print(_summary(seen, args, log, time.monotonic() - t0), flush=True)
    return 0


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached stdin: no keyboard
        return False


def hold_final_screen(tui, poll: float = 0.2) -> None:
    """The run ended: keep the dashboard and its final state up until the user presses q,
    saying so in the header ("finished at step N — q leaves"). From now on q ends the viewer:
    no run goes on to hand the screen to a plain log. Returns at once when no dashboard is
    drawing (plain lines, or q was pressed already)."""
    tui.quit_ends = True
    tui.status = HOLD_STATUS
    while tui.mode == "dashboard" and not tui.wait(poll):
        pass


def _summary(seen: Follow, args, log: str, wall: float) -> str:
    t, end = seen.training, seen.end
    steps = 0 if t is None else t.step + 1
    reward = "n/a" if t is None else f"{t.reward_mean:.3f}"
    how = "" if end is None or end.reason == "finished" else f" ({end.reason})"
    return (f"demo: {steps}/{args.steps} steps on {args.env}{how}, final reward {reward}, {wall:.0f} s, "
            f"log {log} (--replay it)")


# ------------------------------------------------------------------ entry point

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vlmrl.utils.tui_live",
        description="Live terminal dashboard of a Qwen3-VL RL run. Default: train the tiny "
                    "Qwen3-VL and watch it live. Keys: q leave, p pause, [ ] layers, s stat, "
                    "b/B batch, m matrix, e explorer, c charts, g rollout group, u updates, ? help.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--synthetic", action="store_true", help="drive the dashboard with model-free synthetic events")
    src.add_argument("--attach", metavar="FILE", help="follow a growing event log (tail -f) and show it live")
    src.add_argument("--replay", metavar="FILE", help="step through a finished event log (arrows, Home/End, space, +/-)")
    p.add_argument("--env", default="colors", choices=sorted(ENVS), help="task of the live demo (default colors)")
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"PPO updates of the live demo (default {DEMO_STEPS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo run, live or synthetic (default 0)")
    p.add_argument("--compare", metavar="FILE", help="with --replay/--attach: overlay this log's training "
                                                     "scalars on the charts view (key c)")
    p.add_argument("--record", metavar="FILE", help="the event log to append to (live demo default: "
                                                      "runs/demo-<time>.jsonl); a file that is not a vlmrl log is refused")
    p.add_argument("--force", action="store_true", help="with --record: replace FILE even if it is not a vlmrl log")
    p.add_argument("--seconds", type=float, metavar="N", help="stop after N seconds")
    p.add_argument("--fps", type=float, default=20.0, help="frames per second at most (default 20)")
    return p


MAX_FPS = 240.0
MIN_FPS = 0.5
MAX_SECONDS = 365 * 24 * 3600.0


def check_flags(args) -> str:
    """The first problem with the parsed flags, or "" (argparse turns it into exit 2)."""
    if args.seconds is not None and not (0 < args.seconds <= MAX_SECONDS):  # also false for nan
        return f"--seconds must be > 0 and at most {MAX_SECONDS:g} (a year), got {args.seconds}"
    if not MIN_FPS <= args.fps <= MAX_FPS:  # also false for nan
        return f"--fps must be between {MIN_FPS:g} and {MAX_FPS:g}, got {args.fps}"
    if args.steps < 1:
        return f"--steps must be >= 1, got {args.steps}"
    if args.compare and not (args.attach or args.replay):
        return "--compare needs --replay FILE or --attach FILE (the run it is compared with)"
    if args.record and (args.attach or args.replay):
        return "--record records a run (default or --synthetic), not --attach/--replay"
    if args.force and not args.record:
        return "--force goes with --record"
    return ""


def main(argv=None, live_tui=None) -> int:
    """`python -m vlmrl.utils.tui_live` with `live_tui` the dashboard class (tui_live.LiveTUI)."""
    p = build_parser()
    args = p.parse_args(argv)
    problem = check_flags(args)
    if problem:
        p.error(problem)
    if args.record:
        try:  # before anything starts, so an existing file is refused with nothing begun
            check_record_path(args.record, args.force)
        except RecordError as exc:
            print(exc, file=sys.stderr)
            return 2
    try:
        if args.attach:
            return _run_attach(args, Bus(capacity=1000), live_tui)
        if args.replay:
            return _run_replay(args, live_tui)
        if args.synthetic:
            return _run_synthetic(args, Bus(), live_tui)
        if importlib.util.find_spec("jax") is None:  # looks for it without importing it
            return _run_synthetic(args, Bus(), live_tui, note="note: live training needs JAX, which is not "
                                                                "installed; showing --synthetic instead")
        return _run_training(args, live_tui)
    except RecordError as exc:  # the file changed since main looked, or the disk is full
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
