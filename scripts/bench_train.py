"""PPO updates per second with and without the live dashboard (--tui), on the tiny model.

Two trainers are built side by side: "plain" (no taps, no dashboard) and "tui" (sampler
taps on, a LiveTUI drawing on a pseudo-terminal, or in its plain non-TTY mode when no pty
can be opened). After warm-up (compiles), blocks of updates alternate between them so both
see the same machine load; the dashboard runs only during the tui blocks. A third row,
"taps", runs the tui trainer with no dashboard drawing, to split the cost. Prints a table
and, as its last line, JSON with `ratio_tui` = tui updates/s / plain updates/s.

  python scripts/bench_train.py [--steps-per-block 5] [--blocks 6] [--env colors]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _drain(fd: int, stop: threading.Event, counter: list) -> None:
    """Read (and discard) what the dashboard writes to the pty, as a terminal would."""
    import select

    while not stop.is_set():
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                counter[0] += len(os.read(fd, 65536))
            except OSError:
                return


def open_terminal():
    """(out_fd, in_fd, mode, cleanup): a pty sized 160x48 when possible, else /dev/null (non-TTY)."""
    try:
        import fcntl
        import pty
        import struct
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 48, 160, 0, 0))
        stop, counter = threading.Event(), [0]
        reader = threading.Thread(target=_drain, args=(master, stop, counter), daemon=True)
        reader.start()

        def cleanup():
            stop.set()
            reader.join(1.0)
            os.close(slave)
            os.close(master)

        return slave, slave, "pty 160x48", cleanup, counter
    except (ImportError, OSError):
        null = os.open(os.devnull, os.O_RDWR)
        return null, null, "non-tty fallback (plain lines)", lambda: os.close(null), [0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="colors")
    ap.add_argument("--steps-per-block", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="updates per trainer before timing (compiles)")
    a = ap.parse_args(argv)

    from vlmrl.core.cli import parse_args
    from vlmrl.core.trainer import Trainer
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.taps import TapConfig
    from vlmrl.utils.tui_live import LiveTUI

    args = parse_args(["--env", a.env, "--quiet"])
    plain_bus, tui_bus = Bus(), Bus()
    plain = Trainer(args, bus=plain_bus, tap=None)
    tui_tr = Trainer(args, bus=tui_bus, tap=TapConfig(enabled=True))
    tui_tr.groups = True  # as under --tui: each update's GroupState (one more scoring pass)
    out_fd, in_fd, mode, cleanup, written = open_terminal()
    null = open(os.devnull, "w")
    t = tui_tr.config.text
    tui = LiveTUI(num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads, bus=tui_bus,
                  out_fd=out_fd, in_fd=in_fd, plain_stream=null)
    tui_bus.publish(tui_tr.run_info())
    for _ in range(a.warmup):
        plain.train_step()
        tui_tr.train_step()
    times = {"plain": [], "taps": [], "tui": []}
    try:
        for _ in range(a.blocks):
            # "taps": the tui trainer with its sampler taps publishing, but no dashboard drawing
            for name, tr in (("plain", plain), ("taps", tui_tr), ("tui", tui_tr)):
                if name == "tui":
                    tui.start()
                t0 = time.perf_counter()
                for _ in range(a.steps_per_block):
                    tr.train_step()
                times[name].append((time.perf_counter() - t0) / a.steps_per_block)
                if name == "tui":
                    tui.stop()
    finally:
        tui.stop()
        cleanup()
        null.close()
    # median block: one block disturbed by another process on the shared machine does not decide it
    ups = {k: 1.0 / sorted(v)[len(v) // 2] for k, v in times.items()}
    ratio = ups["tui"] / ups["plain"]
    print(f"{'run':8s} {'updates/s':>10s} {'s/update, each block':>48s}")
    for k in ("plain", "taps", "tui"):
        print(f"{k:8s} {ups[k]:10.3f} {' '.join(f'{x:.3f}' for x in times[k]):>48s}")
    print(f"dashboard: {mode}; frames drawn {tui.frames}; bytes written {written[0]}; "
          f"render cpu {tui.cpu_s:.2f}s; batch {args.batch}x{args.group} rows")
    print(json.dumps({"bench": "train", "env": a.env, "updates_per_s_plain": round(ups["plain"], 4),
                      "updates_per_s_tui": round(ups["tui"], 4),
                      "updates_per_s_taps_only": round(ups["taps"], 4), "ratio_tui": round(ratio, 4), "terminal": mode,
                      "blocks": a.blocks, "steps_per_block": a.steps_per_block, "frames": tui.frames}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
