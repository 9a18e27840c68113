"""PPO on Qwen3-VL with an optional live dashboard.

  python -m vlmrl.core.train --env colors --model tiny --steps 200 [--model_dir HF_DIR]
      [--tui] [--record FILE] [--seed N] [--ckpt DIR] [--resume] [--no_compile_cache]

The flags are in cli.py, the loop in trainer.py, what a run publishes in telemetry.py;
this module runs them. Without --tui each update prints one plain line; with --tui the
dashboard shows DecodeState (sampler taps), TrainingState (every update) and CreditState
(one completion per update). `run_training(argv)` is the same run as a function.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from typing import Callable, List, Optional

from vlmrl.core import compile_cache, distributed, telemetry
from vlmrl.core.cli import Args, UsageError, layer_or_mean, parse_args, validate
from vlmrl.core.trainer import Trainer
from vlmrl.instrument.bus import Bus, default_bus
from vlmrl.instrument.record import Recorder, RecordError
from vlmrl.instrument.taps import TapConfig
from vlmrl.utils.tui.panels.common import fmt_scale
from vlmrl.utils.tui_live import LiveTUI


def tap_config(args: Args) -> TapConfig:
    """Taps on, with the prompt's attention matrix (the `m` view) of --matrix_layer/--matrix_head."""
    layer = layer_or_mean(args.matrix_layer, "--matrix_layer")
    return TapConfig(enabled=True, matrix_layer=-1 if layer is None else layer,
                     matrix_head=layer_or_mean(args.matrix_head, "--matrix_head"))


def run_line(info, args: Args) -> str:
    """The first plain line: what trains on which devices, in the dashboard header's words,
    e.g. "devices 4 · data 2 fsdp 2 · cpu · tiny-rl on colors · 200 updates"."""
    updates = f"{args.steps} update" + ("s" if args.steps != 1 else "")
    return f"devices {fmt_scale(info) or info.device_count} · {info.device_kind} · {info.model_name} on {args.env} · {updates}"


def check_finite(m: dict, ckpt: Optional[str]) -> None:
    """UsageError when an update's loss or gradient norm is NaN or infinite: the parameters
    are then no longer trustworthy, so the run stops before it prints, saves or prunes
    anything (a bad checkpoint must never replace the last good one)."""
    bad = [f"{name} {m[key]}" for name, key in (("loss", "loss/total"), ("grad norm", "optim/grad_norm"))
           if not math.isfinite(m[key])]
    if bad:
        kept = f"; {ckpt} keeps its checkpoints as they were" if ckpt else ""
        raise UsageError(f"update {m['step']} gave a non-finite {' and '.join(bad)}: stopped without saving{kept}")


def run_training(argv=None, *, bus=None, log: Optional[Callable[[str], None]] = None,
                 stop: Optional[threading.Event] = None, on_update: Optional[Callable[[dict], None]] = None,
                 manage_tui: bool = True) -> List[dict]:
    """Run PPO as `python -m vlmrl.core.train` would; returns one metrics dict per update.

    argv: a list of flags or an Args. bus: where events go (default: the process bus the
    dashboard watches). log: where progress lines go (default stdout; none under --tui).
    stop: set it to end after the current update. manage_tui: with --tui, start and stop a
    LiveTUI here (a caller that already shows one passes False).
    """
    args = argv if isinstance(argv, Args) else parse_args(argv)
    validate(args)
    t_start = time.monotonic()
    # before anything touches JAX: join the other processes of a multi-process run
    process, _ = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    primary = process == 0
    # every process runs the same programs (taps included); only process 0's events go anywhere
    bus = Bus() if not primary else bus if bus is not None else default_bus()
    quiet = args.quiet or args.tui or not primary  # the dashboard owns the terminal
    say = (lambda s: None) if quiet else (log or (lambda s: print(s, flush=True)))
    counts = None
    if not args.no_compile_cache:
        _, counts = compile_cache.enable(args.compile_cache)
    tap = tap_config(args) if args.tui or args.record else None
    trainer = Trainer(args, bus=bus, tap=tap)
    info = trainer.run_info()
    say(run_line(info, args))
    if args.resume:  # (resume-or-start: a run with nothing to resume starts, and says so)
        if trainer.restore(args.ckpt):
            say(f"resumed from {args.ckpt} at step {trainer.step}")
        else:
            say(f"--resume: no checkpoint found in {args.ckpt}; starting at step 0")
    tui = recorder = status = None
    history: List[dict] = []
    reason = "failed"
    try:
        if args.record:
            try:
                recorder = Recorder(bus, args.record, process_index=process, run_info=info, force=args.force)
            except RecordError as exc:  # changed since validate() looked, or the disk is full
                raise UsageError(str(exc)) from None
        if args.tui and manage_tui and primary:
            tui = LiveTUI(num_layers=info.num_layers, num_heads=info.num_heads, max_cache=info.max_cache, bus=bus)
            tui.start()
        bus.publish(telemetry.memory_plan(trainer))  # the plan view (key k); recorded for replay
        if trainer.step < args.steps:
            say(f"compiling rollout and update for {args.env} (first step is slower) ...")
            # the dashboard shows what is compiling, ticking, until the first update lands
            status = telemetry.CompileStatus(bus, info, lambda: trainer.phase).start()
        else:
            bus.publish(info)
        while trainer.step < args.steps and not (stop is not None and stop.is_set()):
            m = trainer.train_step()
            if status is not None:
                status.stop()
                status = None
                if counts is not None:
                    say(f"first step {m['times/step_s']:.1f} s (compilations: {counts.summary()})")
            check_finite(m, args.ckpt)
            history.append(m)
            bus.publish(telemetry.with_memory(info))  # memory as it stands after this update
            say(telemetry.progress_line(m))
            if on_update is not None:
                on_update(m)
            if args.ckpt and (trainer.step % args.ckpt_every == 0 or trainer.step == args.steps):
                say(f"checkpoint of step {trainer.step} saved in {trainer.save(args.ckpt)}")
        if args.ckpt and history and trainer.step % args.ckpt_every and trainer.step != args.steps:
            # stopped early: keep what was learned
            say(f"checkpoint of step {trainer.step} saved in {trainer.save(args.ckpt)}")
        reason = "finished" if trainer.step >= args.steps else "stopped"
    except KeyboardInterrupt:
        reason = "interrupted"
        raise
    finally:
        if status is not None:
            status.stop()
        last = history[-1]["step"] if history else (trainer.step - 1 if trainer.step else None)
        bus.publish(telemetry.run_end(last, reason, time.monotonic() - t_start))
        if recorder is not None:
            recorder.close()
        if tui is not None:
            tui.stop()
        if counts is not None:
            counts.close()
    return history


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run_training(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
