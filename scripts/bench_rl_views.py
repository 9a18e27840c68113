"""Bytes the charts (c) and group (g) views send: steady frames against a full repaint.

A recorded run is played into the real store at its recorded pace (gaps over 1 s cut to
1 s, as --replay plays), one frame every 1/20 s, each drawn by the real layout and diffed
by `frame.FrameEncoder` (256 colours). Per view and size:
  full_B        bytes of a full repaint of the last frame
  steady_B      mean bytes per frame after the first (all frames, updates included)
  ratio         steady_B / full_B                         (goal <= 0.10)
  update_B      mean bytes of the frames where an update arrived (the charts rescale)
  idle_B        mean bytes of the other frames
  updates/s     training updates per second in the recording
The tiny run updates several times a second, far more often than a real one (seconds to
minutes per update), so the recorded pace is the hard case; update_B / full_B says what
one update costs whatever the pace.
Usage: python scripts/bench_rl_views.py [LOG] (default tests/data/tiny_colors_seed0.jsonl)
The last line is JSON.
"""
from __future__ import annotations

import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vlmrl.instrument.events import TrainingState  # noqa: E402
from vlmrl.instrument.log_read import read_log  # noqa: E402
from vlmrl.utils.tui import layout, theme  # noqa: E402
from vlmrl.utils.tui.frame import FrameEncoder  # noqa: E402
from vlmrl.utils.tui.store import Store  # noqa: E402
from vlmrl.utils.tui.view import ViewState  # noqa: E402

FPS = 20.0
MAX_GAP_S = 1.0
SIZES = ((80, 24), (160, 50), (240, 70))


def paced(events):
    """(seconds since start, event) at the recorded pace, long gaps cut to MAX_GAP_S."""
    t, last = 0.0, None
    for ev in events:
        wall = getattr(ev, "wall_time", None)
        if isinstance(wall, (int, float)) and last is not None:
            t += min(max(wall - last, 0.0), MAX_GAP_S)
        if isinstance(wall, (int, float)):
            last = wall
        yield t, ev


def bench(events, mode: str, w: int, h: int) -> dict:
    clock = [0.0]
    store = Store(clock=lambda: clock[0], started_at=0.0)
    palette = theme.palette_for_depth("256")
    enc = FrameEncoder("256")
    view = ViewState(mode=mode)
    timeline = list(paced(events))
    end = timeline[-1][0]
    i, frame, sizes, updated = 0, 0, [], []
    while True:
        now = frame / FPS
        got_update = False
        while i < len(timeline) and timeline[i][0] <= now:
            store.apply(timeline[i][1])
            got_update |= isinstance(timeline[i][1], TrainingState)
            i += 1
        clock[0] = now
        canvas = layout.render_screen(store.snapshot(), view, w, h, now, palette, meta={"dropped": 0})
        data = enc.encode(canvas)
        if frame:
            sizes.append(len(data))
            updated.append(got_update)
        frame += 1
        if now > end + 1.0:
            break
    full = len(FrameEncoder("256").encode(canvas))
    upd = [s for s, u in zip(sizes, updated) if u]
    idle = [s for s, u in zip(sizes, updated) if not u]
    n_updates = sum(isinstance(ev, TrainingState) for ev in events)
    steady = statistics.mean(sizes)
    return {"view": mode, "size": f"{w}x{h}", "full_B": full, "steady_B": steady, "ratio": steady / full,
            "update_B": statistics.mean(upd) if upd else 0.0, "idle_B": statistics.mean(idle) if idle else 0.0,
            "updates_per_s": n_updates / max(end, 1e-9), "frames": len(sizes)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(ROOT, "tests", "data", "tiny_colors_seed0.jsonl")
    events = read_log(path)[1]
    rows = [bench(events, mode, w, h) for mode in ("charts", "group") for w, h in SIZES]
    print(f"{'view':<7} {'size':>7} {'full_B':>7} {'steady_B':>9} {'ratio':>6} {'update_B':>9} {'idle_B':>7} "
          f"{'upd/s':>6} {'frames':>6}")
    for r in rows:
        print(f"{r['view']:<7} {r['size']:>7} {r['full_B']:7d} {r['steady_B']:9.1f} {r['ratio']:6.3f} "
              f"{r['update_B']:9.1f} {r['idle_B']:7.1f} {r['updates_per_s']:6.2f} {r['frames']:6d}")
    print(json.dumps({"log": os.path.basename(path), "max_ratio": round(max(r["ratio"] for r in rows), 4),
                      "max_update_ratio": round(max(r["update_B"] / r["full_B"] for r in rows), 4),
                      "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
