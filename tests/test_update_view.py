"""The update view (key u) as a terminal shows it, from a really recorded tiny PPO run
(pyte over the frame encoder's bytes); the plain log's update line; the alert and scale
rules on hand-made numbers; hostile UpdateStats rejected whole."""
from __future__ import annotations

import io

import numpy as np
import pyte
import pytest

from vlmrl.instrument.events import UPDATE_OTHER_ROWS, UpdateStats
from vlmrl.utils.tui import layout
from vlmrl.utils.tui.frame import FrameEncoder
from vlmrl.utils.tui.palette import COLOR, MONO
from vlmrl.utils.tui.panels import updates
from vlmrl.utils.tui.plainlog import PlainLog
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.update_math import alerts, decade_range, fmt_ratio, log_levels
from vlmrl.utils.tui.view import ViewState, handle_key


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A tiny PPO run (4 updates of 2 optimizer steps) recorded through the trainer's own
    bus and Recorder with the taps on: the update taps ride along."""
    from vlmrl.core.cli import parse_args
    from vlmrl.core.trainer import Trainer
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.record import Recorder
    from vlmrl.instrument.taps import TapConfig

    path = str(tmp_path_factory.mktemp("run") / "run.jsonl")
    args = parse_args(["--env", "colors", "--steps", "4", "--batch", "2", "--group", "4", "--minibatches", "2",
                       "--epochs", "1", "--seed", "1", "--max_new_tokens", "4"])
    bus = Bus(capacity=100_000)
    trainer = Trainer(args, bus=bus, tap=TapConfig(enabled=True))
    info = trainer.run_info()
    with Recorder(bus, path, run_info=info):
        bus.publish(info)
        for _ in range(args.steps):
            trainer.train_step()
    assert trainer.update_host.callbacks == 4 and trainer.update_host.errors == 0
    return path


def _replayed(path):
    from vlmrl.utils.tui.replay import ReplayLog

    log = ReplayLog.open(path)
    store = Store(clock=lambda: 0.0)
    for ev in log.events:
        store.apply(ev)
    return log, store


def _terminal(canvas, depth="256"):
    screen = pyte.Screen(canvas.width, canvas.height)
    pyte.ByteStream(screen).feed(FrameEncoder(depth).encode(canvas))
    return screen.display


@pytest.mark.slow
def test_update_view_of_a_recorded_run_on_a_terminal(recorded):
    log, store = _replayed(recorded)
    ups = [e for e in log.events if isinstance(e, UpdateStats)]
    assert [u.step for u in ups] == [0, 1, 2, 3] and all(u.optimizer_steps == 2 for u in ups)
    state = store.snapshot()
    assert not state.problems and [u.step for u in state.updates] == [0, 1, 2, 3]
    last, prev = ups[-1], ups[-2]
    view = handle_key(ViewState(), "u")
    assert view.mode == "updates"
    for theme, depth in ((COLOR, "truecolor"), (MONO, "none")):
        canvas = layout.render_screen(state, view, 120, 32, 0.0, theme)
        shown = _terminal(canvas, depth)
        assert shown == [canvas.row_text(y) for y in range(canvas.height)]
        text = "\n".join(shown)
        assert "UPDATES" in text and "step 3" in text and "L0-1/2" in text
        # the global figures are the recorded ones
        assert f"grad {last.grad_norm:.3f} before clipping (max {last.grad_norm_max:.3f})" in text
        assert f"clip ×{last.clip_factor:.3f}" in text and "2 optimizer steps" in text
        # each layer row: its heads, then its MLP and whole-layer ratio as recorded
        for layer in (0, 1):
            row = next(r for r in shown if r[1:].lstrip().startswith(f"L{layer} "))
            assert fmt_ratio(last.mlp_ratio[layer]) in row and fmt_ratio(last.layer_ratio[layer]) in row
            cells = row[len("L1") + 2:][:last.head_ratio.shape[1]]  # after "▶L1 " / " L0 "
            span = decade_range([last.head_ratio, last.mlp_ratio, last.layer_ratio, last.vision_ratio,
                                 last.merger_ratio, last.other_ratio])
            assert cells == "".join(updates.GLYPHS[i] for i in log_levels(last.head_ratio[layer], span))
        # vision column: the blocks' strip, every merger and the other rows with their values
        assert "VISION" in text and f"V0-{len(last.vision_ratio) - 1} " in text
        for i, name in enumerate(["merger"] + [f"DS{j}" for j in range(len(last.merger_ratio) - 1)]):
            assert any(name in r and fmt_ratio(last.merger_ratio[i]) in r for r in shown), name
        for i, name in enumerate(UPDATE_OTHER_ROWS):
            assert any(name in r and fmt_ratio(last.other_ratio[i]) in r for r in shown), name
        # the chart of the selected (deepest) layer over the 4 updates, and the alert line
        assert "L1 ‖Δw‖/‖w‖ over updates (log)" in text and "steps 0-3" in text
        exploding, dead = alerts(prev, last)
        # the tiny model's last DeepStack merger feeds nothing a completion sees: it never moves
        assert "DS1" in dead and f"dead {' '.join(dead)}" in text
        for name, factor in exploding:
            assert f"{name} ×{factor:.0f}" in text
    # ↑ selects layer 0: the marker and the chart follow it
    up = handle_key(view, "KEY_UP", state)
    text = "\n".join(_terminal(layout.render_screen(state, up, 120, 32, 0.0, COLOR)))
    assert "▶L0" in text.replace(" ", "") and "L0 ‖Δw‖/‖w‖ over updates" in text
    assert handle_key(up, "u").mode == "dashboard"


@pytest.mark.slow
def test_plain_log_prints_the_recorded_global_figures(recorded):
    log, _ = _replayed(recorded)
    out = io.StringIO()
    plain = PlainLog(out)
    for ev in log.events:
        plain.feed(ev)
    lines = [ln for ln in out.getvalue().splitlines() if "update step" in ln]
    ups = [e for e in log.events if isinstance(e, UpdateStats)]
    assert len(lines) == 4
    for ln, u in zip(lines, ups):
        assert f"update step {u.step} | grad {u.grad_norm:.3f} before clipping (max {u.grad_norm_max:.3f})" in ln
        assert f"clip x{u.clip_factor:.3f}" in ln and "dead DS1" in ln


def _event(step, layer_ratio, heads=4, merger=(1e-3, 0.0)):
    L = len(layer_ratio)
    lr = np.asarray(layer_ratio, np.float32)
    return UpdateStats(step=step, optimizer_steps=1, grad_norm=1.5, grad_norm_max=1.5, clip_factor=0.667,
                       head_ratio=np.repeat(lr[:, None], heads, 1), head_grad=np.ones((L, heads), np.float32),
                       mlp_ratio=lr, layer_ratio=lr, vision_ratio=np.full(3, 1e-3, np.float32),
                       merger_ratio=np.asarray(merger, np.float32),
                       other_ratio=np.asarray([1e-3, 1e-3, np.nan], np.float32))


def test_alerts_name_rows_that_jump_tenfold_or_fall_to_zero():
    a = _event(0, [1e-3, 1e-3, 1e-3, 1e-3])
    b = _event(1, [1e-3, 1.2e-2, 9e-3, 0.0])
    exploding, dead = alerts(a, b)
    assert exploding == [("L1", pytest.approx(12.0, rel=1e-4))]  # 9x is not a jump
    assert dead == ["L3", "DS0"]
    assert alerts(None, b)[0] == []  # nothing to compare the first update with
    tiny = _event(2, [1e-3, 1e-3, 1e-7, 1e-3], merger=(1e-3, 1e-3))
    assert alerts(b, tiny)[1] == ["L2"]  # four decades below the median is ~0


def test_log_levels_span_the_decades_of_the_update():
    span = decade_range([np.array([1e-4, 1e-3, 1e-2, 0.0, np.nan])])
    assert span == pytest.approx((-4.0, -2.0))
    assert log_levels(np.array([1e-4, 3.2e-4, 1e-3, 3.2e-3, 1e-2, 0.0, np.nan]), span).tolist() == [0, 1, 2, 3, 3, 4, 5]
    # an update whose rows all moved alike is one decade wide, not stretched over 4 colours
    lo, hi = decade_range([np.array([1.0e-3, 1.1e-3])])
    assert hi - lo == pytest.approx(1.0)


def test_store_rejects_malformed_update_stats_whole():
    store = Store(clock=lambda: 0.0)
    store.apply(_event(0, [1e-3, 2e-3]))
    bad = [
        _event(1, [1e-3, 2e-3]).__class__(step=1, head_ratio=np.ones(3, np.float32)),  # not [layers, heads]
        UpdateStats(step=2, layer_ratio=np.array([-1.0], np.float32)),  # negative
        UpdateStats(step=3, layer_ratio=np.ones(2, np.float32), mlp_ratio=np.ones(3, np.float32)),  # disagree
        UpdateStats(step=4, head_ratio=np.ones((2, 4), np.float32), head_grad=np.ones((2, 3), np.float32)),
        UpdateStats(step=-1),
    ]
    for ev in bad:
        store.apply(ev)
    state = store.snapshot()
    assert [u.step for u in state.updates] == [0] and len(state.problems) == 4  # MAX_PROBLEMS kept
    store.apply(_event(0, [5e-3, 5e-3]))  # a duplicate callback: last write wins
    assert store.snapshot().updates[0].layer_ratio[0] == pytest.approx(5e-3)


def test_view_draws_at_every_size_and_says_na_before_any_update():
    store = Store(clock=lambda: 0.0)
    view = ViewState(mode="updates")
    empty = "\n".join(_terminal(layout.render_screen(store.snapshot(), view, 100, 20, 0.0, COLOR)))
    assert "no update statistics yet" in empty and "n/a" in empty
    for step in range(6):
        store.apply(_event(step, [1e-3 * (1 + step)] * 30, heads=16))
    state = store.snapshot()
    for w, h in ((40, 10), (60, 20), (80, 24), (200, 60)):
        canvas = layout.render_screen(state, view, w, h, 0.0, COLOR)
        assert _terminal(canvas) == [canvas.row_text(y) for y in range(h)]
    # paging follows the selection: [ from the deepest layer shows an earlier page
    text = "\n".join(_terminal(layout.render_screen(state, view, 100, 24, 0.0, COLOR)))
    assert "▶L29" in text.replace(" ", "") and "pg 1/" in text
    paged = handle_key(view, "[", state)
    text = "\n".join(_terminal(layout.render_screen(state, paged, 100, 24, 0.0, COLOR)))
    assert "▶L29" not in text.replace(" ", "") and "pg 2/" in text
