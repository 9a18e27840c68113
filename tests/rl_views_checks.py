"""Checks of the charts and group views against a recorded run, shared by the tests on
the committed logs (tests/data) and on a run recorded afresh. The oracle reads the log
with the json module alone, never through vlmrl's codec or store."""
from __future__ import annotations

import base64
import json
import math

import numpy as np
import pyte

from vlmrl.instrument.log_read import read_log
from vlmrl.utils.tui import layout
from vlmrl.utils.tui.chart_model import unbraille
from vlmrl.utils.tui.frame import FrameEncoder
from vlmrl.utils.tui.palette import COLOR
from vlmrl.utils.tui.panels import charts
from vlmrl.utils.tui.state import Comparison
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.view import ViewState

SIZES = [(80, 24), (120, 40), (200, 60)]
T = 1000.0
SCALARS = {"reward_mean": "reward_mean", "kl": "kl", "loss": "loss", "policy_entropy": "policy_entropy",
           "clip_fraction": "clip_fraction", "grad_norm": "grad_norm", "learning_rate": "learning_rate",
           "tokens_per_sec": "tokens_per_sec", "update_tokens_per_sec": "update_tokens_per_sec"}


def raw_lines(path):
    with open(path, encoding="ascii") as fh:
        return [json.loads(line) for line in fh if line.strip()][1:]


def logged_scalars(path):
    """{field: [(step, value)]} of every training record, straight from the JSON lines."""
    out = {k: [] for k in SCALARS}
    for rec in raw_lines(path):
        if rec["kind"] == "training":
            for k in SCALARS:
                v = rec.get(k)
                if isinstance(v, (int, float)):
                    out[k].append((rec["step"], float(v)))
    return out


def _array(spec):
    dtype = np.dtype(spec["nd"]).newbyteorder("<")
    flat = np.frombuffer(base64.b64decode(spec["b64"]), dtype) if "b64" in spec else np.asarray(spec["v"], dtype)
    return flat.reshape(spec["shape"])


def last_group(path, first=False):
    """The newest (or with `first`, the oldest) group record as plain Python / numpy, decoded here."""
    recs = [r for r in raw_lines(path) if r["kind"] == "group"]
    rec = (min if first else max)(recs, key=lambda r: r["step"])
    return {**rec, "rewards": _array(rec["rewards"]), "advantages": _array(rec["advantages"]),
            "lengths": _array(rec["lengths"]), "metrics": {k: _array(v) for k, v in rec["metrics"].items()}}


def store_of(path, compare_path=None):
    compare = None
    if compare_path is not None:
        other = Store()
        for ev in read_log(compare_path)[1]:
            other.apply(ev)
        compare = Comparison("A.jsonl", "B.jsonl", other.snapshot().history)
    store = Store(clock=lambda: T, started_at=0.0, compare=compare)
    header, events, stats = read_log(path)
    assert stats.garbage == 0 and stats.truncated == 0
    for ev in events:
        store.apply(ev)
    return store


def on_terminal(state, view, size, theme=COLOR, depth="truecolor"):
    """(canvas, pyte screen) of one frame sent as bytes to a terminal emulator."""
    canvas = layout.render_screen(state, view, size[0], size[1], T, theme)
    screen = pyte.Screen(*size)
    pyte.ByteStream(screen).feed(FrameEncoder(depth).encode(canvas))
    assert screen.display == [canvas.row_text(y) for y in range(size[1])]
    return canvas, screen


def other_steps(path, key):
    return logged_scalars(path)[key] if path is not None else []


def check_charts_show_logged_values(path, size, compare_path=None):
    """Every chart on screen plots exactly the logged values: the model holds them and
    the braille dots the terminal shows are where those values belong."""
    state = store_of(path, compare_path).snapshot()
    view = ViewState(mode="charts")
    _, screen = on_terminal(state, view, size)
    logged = logged_scalars(path)
    placed = charts.chart_rects(state, view, size[0], size[1] - 1)
    assert placed, "no chart drawn"
    for model, rect in placed:
        want = logged[model.series.key]
        assert list(zip(model.main.steps, model.main.values)) == want
        assert model.shown == model.main.values  # EMA off
        area = charts.plot_area(model, rect)
        cells = [row[area.x:area.x + area.width] for row in screen.display[area.y:area.y + area.height]]
        dots = unbraille(cells)
        px_h, px_w = dots.shape
        lo, hi = model.y_range
        values = [v for _, v in want]
        if model.series.band is None and model.other is None:
            assert (lo, hi) == ((min(values), max(values)) if max(values) > min(values) else (lo, hi))
        # the x axis runs from the first logged step to the step its label names
        axis = screen.display[rect.y + rect.height - 1]
        s0 = min(st for st, _ in want + other_steps(compare_path, model.series.key))
        s1 = int(axis.split("step ")[1].split()[0]) if "step " in axis else s0
        assert (s0, s1) == model.x_range and s1 >= max(st for st, _ in want)
        title = screen.display[rect.y][rect.x:rect.x + rect.width]
        assert model.series.title in title
        for step, v in want:
            x = 0 if s1 == s0 else round((step - s0) / (s1 - s0) * (px_w - 1))
            y = round((hi - v) / (hi - lo) * (px_h - 1))
            assert dots[y, x], f"{model.series.key} step {step} = {v}: dot ({x}, {y}) is not lit"
            col = np.flatnonzero(dots[:, x])
            # read back: the lit dots of the point's column span its value, to half a dot
            back = hi - col / (px_h - 1) * (hi - lo)
            half = (hi - lo) / (px_h - 1) / 2
            assert back.min() - half - 1e-12 <= v <= back.max() + half + 1e-12
        # the y axis labels name the range the dots are scaled to (4 significant digits)
        top = screen.display[area.y][rect.x:area.x - 1].strip(" ┤│")
        assert math.isclose(float(top.replace("k", "e3").replace("M", "e6")), hi, rel_tol=1e-3, abs_tol=1e-12)
    return state, screen, placed


def check_group_view(path, size):
    """The group view lists the newest update's first prompt's samples best first, with
    their logged rewards and advantages and their tokens."""
    state = store_of(path).snapshot()
    _, screen = on_terminal(state, ViewState(mode="group"), size)
    rec = last_group(path)
    g = rec["group"]
    order = sorted(range(g), key=lambda r: (-rec["rewards"][r], -rec["advantages"][r], r))
    text = "\n".join(screen.display)
    assert f"update {rec['step']}" in text
    assert rec["prompts"][0][:20] in text
    rows = [line for line in screen.display if line[2:3] == "#" and line[3:4].isdigit()]
    assert len(rows) == g
    for line, r in zip(rows, order):
        assert line[2:].split()[0] == f"#{r}"
        assert float(line[7:14]) == round(float(rec["rewards"][r]), 3)
        assert float(line[15:21]) == round(float(rec["advantages"][r]), 2)
        toks = rec["tokens"][r]
        if toks:
            assert line[23:].startswith(toks[0][:16])
    return state, screen
