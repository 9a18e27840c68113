"""Write mockups/tui_live_mockup.txt: three dashboard frames rendered by the real layout,
and mockups/rl_views_mockup.txt: the charts (c) and rollout group (g) views of two real
recorded tiny runs (tests/data), drawn by the same renderer, and
mockups/update_view_mockup.txt: the update view (key u) over a fixed run of updates, and
mockups/image_view_mockup.txt (and .ans, in truecolor): the image view (key v) of a real recorded run.

The frames come from a fixed event sequence (a tiny Qwen3-VL-shaped run answering a
question about an image) at a fixed clock, so the file changes only when the renderer
does; tests/test_mockups.py fails when it is stale. Frames:
  1. a step just arrived   2. between two steps   3. the run paused (idle)
Usage: python scripts/make_mockups.py [--check]   (--check: exit 1 if the file is stale)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import List, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from vlmrl.instrument.events import CreditState, DecodeState, RunInfo, TrainingState, UpdateStats  # noqa: E402
from vlmrl.utils.tui import layout  # noqa: E402
from vlmrl.utils.tui.palette import MONO  # noqa: E402
from vlmrl.utils.tui.panels import flow, kvcache  # noqa: E402
from vlmrl.utils.tui.store import Store  # noqa: E402
from vlmrl.utils.tui.view import ViewState  # noqa: E402

PATH = os.path.join(ROOT, "mockups", "tui_live_mockup.txt")
RL_PATH = os.path.join(ROOT, "mockups", "rl_views_mockup.txt")
RUN_A = os.path.join(ROOT, "tests", "data", "tiny_colors_seed0.jsonl")
RUN_B = os.path.join(ROOT, "tests", "data", "tiny_colors_seed1_lr3e-4.jsonl")
UPDATES_PATH = os.path.join(ROOT, "mockups", "update_view_mockup.txt")
IMAGE_RUN = os.path.join(ROOT, "tests", "data", "tiny_colors_image_seed0.jsonl")
IMAGE_PATH = os.path.join(ROOT, "mockups", "image_view_mockup.txt")
IMAGE_ANSI_PATH = os.path.join(ROOT, "mockups", "image_view_mockup.ans")  # `cat` it in a truecolor terminal
WIDTH, HEIGHT = 120, 40
LAYERS, HEADS = 28, 16
GAP = 0.1  # seconds between decode events in the fixed sequence
PROMPT_LEN = 96  # 14 text + 64 image + 18 text tokens
SPAN = (14, 78)
KV_SLOT_BYTES = 2 * LAYERS * 8 * 128 * 2  # K and V, 8 kv heads x 128 dims in bf16, batch 1
ANSWER = [" The", " image", " shows", " three", " blue", " circles", " and", " one", " red", " square", "."]


class FixedClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _stats(step: int) -> dict:
    """Deterministic [layers, heads] stats (no RNG: the file must not depend on numpy's streams)."""
    l = np.arange(LAYERS, dtype=np.float64)[:, None]
    h = np.arange(HEADS, dtype=np.float64)[None, :]
    focus = 0.5 + 0.48 * np.sin(0.7 * l + 1.3 * h + 0.9 * step)
    mx = np.clip(0.1 + 0.85 * focus, 0, 1)
    vision = np.clip(np.sin(math.pi * l / (LAYERS - 1)) * (0.8 - 0.05 * step) * (0.6 + 0.4 * np.cos(h)), 0, 1)
    sink = np.clip(0.15 + 0.1 * np.cos(l + h), 0, 1 - vision)
    return {k: v.astype(np.float32) for k, v in zip(("focus", "max", "vision", "sink"), (focus, mx, vision, sink))}


def _decode(step: int, text: str, prob: float) -> DecodeState:
    pos = PROMPT_LEN + step - 1 - 56  # image tokens compress positions: 64 tokens span 8 positions
    alts = [(1000 + step, text, prob), (7, " a", round((1 - prob) * 0.6, 3)), (9, " two", round((1 - prob) * 0.3, 3))]
    return DecodeState(step=step, token_id=1000 + step, token_text=text, token_prob=prob,
                       cache_len=PROMPT_LEN + step, cache_max=2048, active_layer=LAYERS - 1,
                       active_head=(3 * step) % HEADS, mrope_t=pos, mrope_h=pos, mrope_w=pos,
                       batch_size=1, entropy=round(1.2 - 0.08 * step, 3), top_k=alts,
                       attn_stats=_stats(step), vision_span=SPAN, vision_grid=(1, 16, 16),
                       phase="decode", kv_bytes=KV_SLOT_BYTES * (PROMPT_LEN + step),
                       wall_time=1_700_000_000.0 + step)


def scenario(upto: int) -> Tuple[Store, float]:
    """A store fed the fixed sequence through decode step `upto`; returns it and the arrival time."""
    clock = FixedClock()
    store = Store(clock=clock, started_at=0.0)
    clock.t = 60.0
    store.apply(RunInfo(model_name="qwen3vl-2b", num_layers=LAYERS, num_heads=HEADS, num_kv_heads=8,
                        head_dim=128, dtype="bfloat16", max_cache=2048, batch=1, vision_depth=24,
                        deepstack_layers=(0, 1, 2), device_kind="cuda", device_memory_in_use=5_368_709_120,
                        device_memory_limit=85_899_345_920, wall_time=1_700_000_000.0))
    for s in range(1, 6):
        store.apply(TrainingState(step=s, reward_mean=0.2 + 0.1 * s, reward_std=0.3 - 0.02 * s, kl=0.004 * s,
                                  loss=0.6 - 0.05 * s, tokens_per_sec=850.0 + 10 * s, policy_entropy=1.5 - 0.1 * s,
                                  clip_fraction=0.12 - 0.01 * s, wall_time=1_700_000_000.0))
    store.apply(CreditState(tokens=ANSWER, credits=[0.05, 0.42, 0.11, 0.93, 0.38, 0.61, -0.04, -0.27, -0.55, 0.19, 0.02],
                            step=5))
    for step in range(1, upto + 1):
        clock.t += GAP
        store.apply(_decode(step, ANSWER[(step - 1) % len(ANSWER)], round(0.55 + 0.04 * (step % 9), 3)))
    return store, clock.t


# (title, decode steps applied, seconds after the newest event): `⚡ STEP` is lit for a
# quarter second after an event arrives; the flow reads idle after 1 s without one.
FRAMES = (
    ("a step just arrived", 6, 0.05),
    ("between two steps", 7, 0.5),
    ("the run paused", 8, 3.0),
)


def build() -> Tuple[str, List[Tuple[str, str, str]]]:
    """The mockup text and, per frame, (title, stage lit, KV status)."""
    rows: List[Tuple[str, str, str]] = []
    out: List[str] = [
        "vlmrl live dashboard: three frames written by scripts/make_mockups.py with the real renderer",
        f"({WIDTH}x{HEIGHT}, no colour: in a terminal the stage names and ⚡ indicators are yellow/green/cyan and",
        "flash at 5 Hz, heat cells are coloured and refresh 5x/s, heads above 0.75 and the top credit",
        "token flash at 2.5 Hz, one toggle per refresh). Do not edit by hand.",
        "",
    ]
    for i, (title, upto, age) in enumerate(FRAMES, 1):
        store, arrived = scenario(upto)
        now = arrived + age
        state = store.snapshot()
        canvas = layout.render_screen(state, ViewState(), WIDTH, HEIGHT, now, MONO, meta={"dropped": 0, "fps": 20.0})
        lit = ("step arrived" if flow.just_arrived(state, 0, now)
               else "idle" if flow.is_idle(state, 0, now) else "between steps")
        kv = kvcache.status(state, 0, now)
        rows.append((title, lit, kv))
        out.append(f"=== Frame {i}: {title} · t={now:.3f}s · flow: {lit} · KV: {kv} ===")
        out.extend(canvas.row_text(y).rstrip() for y in range(canvas.height))
        out.append("")
    return "\n".join(out), rows


def _replayed(path: str, compare=None) -> Store:
    from vlmrl.instrument.log_read import read_log

    store = Store(clock=FixedClock(), started_at=0.0, compare=compare)
    for ev in read_log(path)[1]:
        store.apply(ev)
    return store


# (title, log, compare with the other run, size, keys pressed after opening the view)
RL_FRAMES = (
    ("charts, 120x40", "charts", False, (120, 40), ""),
    ("charts with --compare and EMA 0.6, 120x40", "charts", True, (120, 40), "s"),
    ("charts, 80x24 (the first six)", "charts", False, (80, 24), ""),
    ("rollout group, metric log-prob, 100x30", "group", False, (100, 30), ""),
    ("rollout group, prompt 2, metric credit, 100x30", "group", False, (100, 30), "]sss"),
    ("rollout group, metric ratio after update, 80x24", "group", False, (80, 24), "ssss"),
)


def build_rl() -> str:
    """The RL views mockup text, from the committed real logs."""
    from vlmrl.utils.tui.state import Comparison
    from vlmrl.utils.tui.view import handle_key

    other = _replayed(RUN_B).snapshot().history
    out = [
        "vlmrl RL views: frames written by scripts/make_mockups.py with the real renderer, from two",
        "tiny colour runs recorded by `python -m vlmrl.core.train --steps 40 --record` (seed 0; seed 1",
        "with --lr 3e-4), kept in tests/data. No colour here: in a terminal this run's lines are cyan,",
        "the compared run's magenta (and dashed), raw values under EMA and the reward std band dark",
        "grey; group tokens take the heat colours of their level. Do not edit by hand.",
        "",
    ]
    for i, (title, mode, compare, (w, h), keys) in enumerate(RL_FRAMES, 1):
        comp = Comparison(os.path.basename(RUN_A), os.path.basename(RUN_B), other) if compare else None
        state = _replayed(RUN_A, comp).snapshot()
        view = handle_key(ViewState(), mode[0], state)
        for k in keys:
            view = handle_key(view, k, state)
        canvas = layout.render_screen(state, view, w, h, 0.0, MONO, meta={"dropped": 0, "source": "REPLAY"})
        out.append(f"=== Frame {i}: {title} ===")
        out.extend(canvas.row_text(y).rstrip() for y in range(canvas.height))
        out.append("")
    return "\n".join(out)


def _update(step: int) -> UpdateStats:
    """A deterministic 2B-shaped UpdateStats: ratios around 3e-4 varying by layer and head,
    layer 3 jumping 14x at the last update (no RNG, so the file depends on the renderer only)."""
    l = np.arange(LAYERS, dtype=np.float64)
    h = np.arange(HEADS, dtype=np.float64)
    base = 3e-4 * 10 ** (0.35 * np.sin(0.45 * l + 0.2 * step))
    jump = np.where((l == 3) & (step == 11), 14.0, 1.0)
    heads = base[:, None] * jump[:, None] * 10 ** (0.3 * np.cos(1.1 * h[None, :] + 0.6 * l[:, None]))
    layer = base * jump
    blocks = 1.5e-4 * 10 ** (0.25 * np.cos(0.5 * np.arange(24) + 0.1 * step))
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return UpdateStats(step=step, optimizer_steps=4, grad_norm=round(2.4 - 0.08 * step, 3),
                       grad_norm_max=round(3.1 - 0.07 * step, 3), clip_factor=round(min(1.0, 1.0 / (2.4 - 0.08 * step)), 3),
                       head_ratio=f32(heads), head_grad=f32(heads * 40), mlp_ratio=f32(layer * 1.2), mlp_grad=f32(layer * 50),
                       layer_ratio=f32(layer), layer_grad=f32(layer * 60), vision_ratio=f32(blocks),
                       vision_grad=f32(blocks * 30), merger_ratio=f32([2.1e-4, 1.8e-4, 1.6e-4, 1.2e-4]),
                       merger_grad=f32([0.05, 0.04, 0.04, 0.03]), other_ratio=f32([4.0e-5, 9.0e-5, 2.0e-4]),
                       other_grad=f32([0.3, 0.01, 0.002]), wall_time=1_700_000_000.0 + step)


def build_updates() -> str:
    """The update view after 12 updates with layer 3 (the one that jumped) selected."""
    from vlmrl.utils.tui.view import handle_key

    store = Store(clock=FixedClock(), started_at=0.0)
    for step in range(12):
        store.apply(_update(step))
    state = store.snapshot()
    view = handle_key(ViewState(), "u")
    for key in ("KEY_HOME", "KEY_DOWN", "KEY_DOWN", "KEY_DOWN"):  # select L3, the layer that jumped
        view = handle_key(view, key, state)
    canvas = layout.render_screen(state, view, WIDTH, HEIGHT, 0.0, MONO, meta={"dropped": 0, "fps": 20.0})
    out = [
        "vlmrl update view (key u): written by scripts/make_mockups.py with the real renderer from 12",
        f"fixed 2B-shaped UpdateStats events ({WIDTH}x{HEIGHT}, no colour: in a terminal the ramp cells are",
        "heat-coloured and alerts red). Do not edit by hand.",
        "",
    ]
    out.extend(canvas.row_text(y).rstrip() for y in range(canvas.height))
    return "\n".join(out) + "\n"


# (title, size, keys pressed after opening the view with v)
IMAGE_FRAMES = (
    ("the answer token 'red' (step 0), all layers, overlay on, 120x40", (120, 40), ("KEY_UP",)),
    ("the same token, layer 1 only, 100x30", (100, 30), ("KEY_UP", "]", "]")),
    ("the newest token, overlay off (the image as a grey ramp), 80x24", (80, 24), ("o",)),
)


def build_image() -> Tuple[str, str]:
    """The image view (key v) of the last generation of a real recorded tiny colour run: the
    text frames (no colour) and one frame as the bytes a truecolor terminal receives."""
    from vlmrl.utils.tui.frame import FrameEncoder
    from vlmrl.utils.tui.palette import COLOR
    from vlmrl.utils.tui.view import handle_key

    state = _replayed(IMAGE_RUN).snapshot()
    out = [
        "vlmrl image view (key v): frames written by scripts/make_mockups.py with the real renderer from",
        "the last generation of a tiny colour run recorded by `python -m vlmrl.core.train --steps 80",
        "--record` (tests/data/tiny_colors_image_seed0.jsonl). No colour here, so the image is a grey",
        "glyph ramp and the overlay the ░▒▓█ ramp; in a colour terminal both are half-block cells (▀),",
        "the heat blended over the image (image_view_mockup.ans has frame 1 in truecolor). Do not edit.",
        "",
    ]
    ansi = ""
    for i, (title, (w, h), keys) in enumerate(IMAGE_FRAMES, 1):
        view = handle_key(ViewState(), "v", state)
        for k in keys:
            view = handle_key(view, k, state)
        meta = {"dropped": 0, "source": "REPLAY"}
        canvas = layout.render_screen(state, view, w, h, 0.0, MONO, meta=meta)
        out.append(f"=== Frame {i}: {title} ===")
        out.extend(canvas.row_text(y).rstrip() for y in range(canvas.height))
        out.append("")
        if i == 1:
            colour = layout.render_screen(state, view, w, h, 0.0, COLOR, meta=meta)
            ansi = FrameEncoder("truecolor", sync=False).encode(colour).decode("utf-8") + "\x1b[0m\n"
    return "\n".join(out), ansi


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the mockup file is stale; write nothing")
    args = ap.parse_args(argv)
    text, rows = build()
    stale = False
    image_text, image_ansi = build_image()
    for path, body in ((PATH, text), (RL_PATH, build_rl()), (UPDATES_PATH, build_updates()), (IMAGE_PATH, image_text),
                       (IMAGE_ANSI_PATH, image_ansi)):
        old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        stale = stale or old != body
        if not args.check and old != body:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(body)
    print(f"{'frame':<26} {'stage lit':<16} {'KV status':<10}")
    for title, lit, kv in rows:
        print(f"{title:<26} {lit:<16} {kv:<10}")
    print(json.dumps({"path": os.path.relpath(PATH, ROOT), "rl_path": os.path.relpath(RL_PATH, ROOT),
                      "updates_path": os.path.relpath(UPDATES_PATH, ROOT),
                      "frames": len(FRAMES), "rl_frames": len(RL_FRAMES), "stale": stale,
                      "written": bool(stale and not args.check)}))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
