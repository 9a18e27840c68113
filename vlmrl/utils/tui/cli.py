"""`python -m vlmrl.utils.tui_live`: the demo (live tiny-model training or --synthetic) and
the viewer of recorded runs (--attach, --replay). No JAX is imported here: training is
imported only when it is the chosen mode."""
from __future__ import annotations

import sys
import threading
import time

from vlmrl.instrument.bus import Bus
from vlmrl.utils.tui_live import LiveTUI


def _run_synthetic(args, bus: Bus, note: str = "") -> int:
    from vlmrl.utils.tui.synthetic import SyntheticRun, drive

    run = SyntheticRun(seed=args.seed, prefill_walk=8)
    recorder = _recorder(args, bus, run.info)
    tui = LiveTUI(num_layers=run.L, num_heads=run.H, bus=bus, fps=args.fps, source="SYNTHETIC")
    if note:
        print(note, file=sys.stderr)
    tui.start()
    try:
        drive(bus.publish, seconds=args.seconds, run=run)
    finally:
        tui.stop()
        if recorder is not None:
            recorder.close()
    return 0


def _recorder(args, bus: Bus, run_info=None):
    if not args.record:
        return None
    from vlmrl.instrument.record import Recorder

    return Recorder(bus, args.record, run_info=run_info)


def _run_attach(args, bus: Bus) -> int:
    from vlmrl.utils.tui.replay import LogFormatError, attach_events

    tui = LiveTUI(bus=bus, fps=args.fps, source="ATTACH").start()
    end = None if args.seconds is None else time.monotonic() + args.seconds
    done = lambda: tui.quit or (end is not None and time.monotonic() >= end)  # noqa: E731
    try:
        for ev in attach_events(args.attach, stop=done, poll=0.05):
            bus.publish(ev)
    except LogFormatError as exc:
        tui.stop()
        print(f"--attach {args.attach}: {exc}", file=sys.stderr)
        return 2
    finally:
        tui.stop()
    return 0


def _run_replay(args) -> int:
    from vlmrl.utils.tui.replay import LogFormatError, ReplayLog

    try:
        log = ReplayLog.open(args.replay)
    except (OSError, LogFormatError) as exc:
        print(f"--replay {args.replay}: {exc}", file=sys.stderr)
        return 2
    tui = LiveTUI(bus=Bus(), fps=args.fps, replay=log, source="REPLAY")
    if not tui.term.is_tty():  # nothing to navigate: print the run as plain lines
        for ev in log.events:
            tui.plain.feed(ev)
        return 0
    tui.start()
    try:
        tui.wait(args.seconds)
    finally:
        tui.stop()
    return 0


def _run_training(args, run_training) -> int:
    """The tiny Qwen3-VL PPO run (`vlmrl.core.train.run_training`), watched live from the first second:
    the dashboard starts before the model is built and compiled."""
    bus = Bus()
    stop = threading.Event()
    flags = ["--tui", "--seed", str(args.seed)] + (["--record", args.record] if args.record else [])
    tui = LiveTUI(bus=bus, fps=args.fps, source="LIVE").start()
    # --seconds ends the run after the update in progress (an update is not interruptible)
    timer = threading.Timer(args.seconds, stop.set) if args.seconds else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        run_training(flags, bus=bus, stop=stop, manage_tui=False)
    except ValueError as exc:  # train.UsageError: a bad flag or input
        tui.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if timer is not None:
            timer.cancel()
        tui.stop()
    return 0


def main(argv=None) -> int:
    """`python -m vlmrl.utils.tui_live`: the live demo, or a recorded run's viewer."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m vlmrl.utils.tui_live",
        description="Live terminal dashboard of a Qwen3-VL RL run. Default: train the tiny "
                    "Qwen3-VL and watch it live. Keys: q leave, p pause, [ ] layers, s stat, "
                    "b batch, m matrix, e explorer, ? help.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--synthetic", action="store_true", help="drive the dashboard with model-free synthetic events")
    src.add_argument("--attach", metavar="FILE", help="follow a growing event log (tail -f) and show it live")
    src.add_argument("--replay", metavar="FILE", help="step through a finished event log (arrows, Home/End, space, +/-)")
    p.add_argument("--record", metavar="FILE", help="append every event to FILE (JSON Lines) while running")
    p.add_argument("--seconds", type=float, metavar="N", help="exit after N seconds")
    p.add_argument("--fps", type=float, default=20.0, help="frames per second at most (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic run (default 0)")
    args = p.parse_args(argv)
    if args.seconds is not None and args.seconds <= 0:
        p.error(f"--seconds must be > 0, got {args.seconds}")
    if args.fps <= 0:
        p.error(f"--fps must be > 0, got {args.fps}")
    if args.record and (args.attach or args.replay):
        p.error("--record records a run (default or --synthetic), not --attach/--replay")
    try:
        if args.attach or args.replay:
            try:
                return _run_attach(args, Bus(capacity=1000)) if args.attach else _run_replay(args)
            except ImportError as exc:
                print(f"--attach/--replay are not available: {exc}", file=sys.stderr)
                return 2
        if args.synthetic:
            return _run_synthetic(args, Bus())
        try:
            from vlmrl.core.train import run_training
        except ImportError as exc:
            return _run_synthetic(args, Bus(), note=f"note: live training is not available ({exc}); "
                                                    "showing --synthetic instead")
        return _run_training(args, run_training)
    except KeyboardInterrupt:
        return 130
