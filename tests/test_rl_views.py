"""Charts (key c) and group (key g) views on real recorded runs (tests/data: two tiny
colour runs, update-level events kept) and on hostile input: what is drawn is what was
logged, read back from the terminal (pyte) by decoding the braille dots."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest

from conftest import SIZES, T, check_charts_show_logged_values, check_group_view, logged_scalars, on_terminal, store_of
from vlmrl.instrument.events import GROUP_MAX_CELLS, GROUP_METRICS, GroupState, TrainingState
from vlmrl.utils.tui import layout
from vlmrl.utils.tui.chart_model import SERIES, SMOOTHING, chart_model, ema
from vlmrl.utils.tui.frame import FrameEncoder
from vlmrl.utils.tui.palette import COLOR, MONO
from vlmrl.utils.tui.panels import charts, group
from vlmrl.utils.tui.plainlog import PlainLog
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.view import ViewState, handle_key

DATA = os.path.join(os.path.dirname(__file__), "data")
RUN_A = os.path.join(DATA, "tiny_colors_seed0.jsonl")
RUN_B = os.path.join(DATA, "tiny_colors_seed1_lr3e-4.jsonl")


@pytest.mark.parametrize("size", SIZES)
def test_charts_plot_the_logged_scalars_on_a_terminal(size):
    state, screen, placed = check_charts_show_logged_values(RUN_A, size)
    assert len(placed) == (6 if size == (80, 24) else 9)
    assert "+3 more" in screen.display[0] if size == (80, 24) else "c/Esc: back" in screen.display[0]


@pytest.mark.parametrize("size", SIZES)
def test_group_view_lists_the_logged_group_best_first(size):
    check_group_view(RUN_A, size)


def test_charts_fill_240x70_with_every_scalar_as_a_grid():
    state = store_of(RUN_A).snapshot()
    placed = charts.chart_rects(state, ViewState(mode="charts"), 240, 69)
    assert [m.series.key for m, _ in placed] == [s.key for s in SERIES]
    assert len({r.x for _, r in placed}) == 3 and len({r.y for _, r in placed}) == 3


@pytest.mark.parametrize("size", SIZES)
def test_compare_overlays_the_second_run_with_a_legend(size):
    state, screen, placed = check_charts_show_logged_values(RUN_A, size, compare_path=RUN_B)
    assert "A.jsonl" in screen.display[0] and "B.jsonl" in screen.display[0]
    other = logged_scalars(RUN_B)
    for model, rect in placed:
        assert list(zip(model.other.steps, model.other.values)) == other[model.series.key]
        assert "vs " in screen.display[rect.y] or rect.width < 40
    # the second run has its own colour on a colour terminal
    canvas = layout.render_screen(state, ViewState(mode="charts"), size[0], size[1], T, COLOR)
    fgs = {st.fg for row in canvas.styles for st in row}
    assert COLOR.chart_main.fg in fgs and COLOR.chart_other.fg in fgs


def test_ema_toggle_plots_the_debiased_ema_of_the_logged_values():
    state = store_of(RUN_A).snapshot()
    view = ViewState(mode="charts")
    for weight in SMOOTHING[1:]:
        view = handle_key(view, "s", state)
        ms = charts.models(state, view)
        for m in ms:
            x = np.asarray(m.main.values)
            n = np.arange(1, len(x) + 1)
            # numpy oracle: s_t = sum_i w^(t-i) (1-w) x_i / (1 - w^t)
            w = weight ** (n[:, None] - n[None, :]) * (n[:, None] >= n[None, :])
            oracle = (w * (1 - weight)) @ x / (1 - weight ** n)
            np.testing.assert_allclose(m.shown, oracle, rtol=1e-9, atol=1e-12)
        assert f"EMA {weight:g}" in layout.render_screen(state, view, 120, 40, T, MONO).row_text(0)
    view = handle_key(view, "s", state)
    assert "EMA off" in layout.render_screen(state, view, 120, 40, T, MONO).row_text(0)


def test_group_keys_cycle_prompts_and_metrics_and_the_legend_names_the_metric():
    state = store_of(RUN_A).snapshot()
    view = handle_key(ViewState(), "g", state)
    assert view.mode == "group"
    n = len(state.group.texts) // state.group.group
    seen = []
    for i in range(len(GROUP_METRICS)):
        text = layout.render_screen(state, view, 120, 40, T, MONO).text()
        assert group.NAMES[GROUP_METRICS[i]] in text
        seen.append(text)
        view = handle_key(view, "s", state)
    assert len(set(seen)) == len(GROUP_METRICS)
    view = handle_key(view, "]", state)
    assert f"prompt 2/{n}" in layout.render_screen(state, view, 120, 40, T, MONO).row_text(0)
    view = handle_key(view, "[", state)
    view = handle_key(view, "[", state)
    assert f"prompt {n}/{n}" in layout.render_screen(state, view, 120, 40, T, MONO).row_text(0)
    assert handle_key(view, "g", state).mode == "dashboard"


def test_mode_keys_c_and_g_leave_the_matrix_and_explorer_keys_alone():
    v = handle_key(ViewState(), "c")
    assert v.mode == "charts" and handle_key(v, "g").mode == "group" and handle_key(v, "c").mode == "dashboard"
    m = handle_key(ViewState(), "m")
    assert handle_key(m, "g").mode == "matrix" and handle_key(m, "c").mode == "matrix"


def test_strip_glyphs_carry_the_metric_without_colour():
    state = store_of(RUN_A).snapshot()
    view = handle_key(handle_key(ViewState(), "g", state), "s", state)  # entropy
    canvas = layout.render_screen(state, view, 120, 40, T, MONO)
    rows = group.sample_order(state, view)
    ev = state.group
    vals = ev.metrics["entropy"][rows]
    finite = vals[np.isfinite(vals)]
    lo, hi = finite.min(), finite.max()
    lines = [canvas.row_text(y) for y in range(canvas.height)]
    starts = [i for i, line in enumerate(lines) if line[2:3] == "#" and line[3:4].isdigit()]
    for k, (y, r) in enumerate(zip(starts, rows)):
        strip = lines[y + 1][group.HEAD + 1:]
        glyphs = [g for g in strip.split(" ") if g]
        for j, g in enumerate(glyphs):
            if j >= len(ev.tokens[r]):
                break
            lv = (vals[k, j] - lo) / (hi - lo) if hi > lo else 0.5
            assert set(g) == {"░▒▓█"[min(int(lv * 4), 3)]}, (r, j, g)


def hostile_group(**over):
    base = dict(step=3, group=2, prompts=["\x1b[2J‮evil"], answers=["red\x07"], texts=["a", "b"],
                tokens=[["\x1b]0;pwn\x07", "red"], ["\u202etxt"]], lengths=np.array([2, 1], np.int32),
                rewards=np.array([0.0, 1.0], np.float32), advantages=np.array([-1.0, 1.0], np.float32),
                metrics={m: np.array([[np.nan, np.inf], [1e30, 0.0]], np.float32) for m in GROUP_METRICS})
    base.update(over)
    return GroupState(**base)


def test_hostile_text_and_values_never_reach_the_terminal_raw():
    store = Store(clock=lambda: T, started_at=0.0)
    store.apply(hostile_group())
    store.apply(TrainingState(step=1, reward_mean=float("nan"), kl=float("inf"), loss=1e308))
    state = store.snapshot()
    assert not state.problems
    for mode in ("group", "charts"):
        for theme, depth in ((COLOR, "truecolor"), (MONO, "none")):
            canvas, screen = on_terminal(state, ViewState(mode=mode), (100, 30), theme, depth)
            data = FrameEncoder(depth).encode(canvas)
            assert b"\x07" not in data and b"\x1b]" not in data and "\u202e".encode() not in data
            assert data.count(b"\x1b[2J") == 1  # the encoder's own clear of a first frame, nothing else
    text = layout.render_screen(state, ViewState(mode="group"), 100, 30, T, MONO).text()
    assert "␛[2J" in text and "␛]0;pwn␇" in text


@pytest.mark.parametrize("bad, why", [
    (dict(group=3), "whole groups"),
    (dict(texts=["a"] * 66, group=2), "samples"),
    (dict(prompts=["a", "b"]), "prompts"),
    (dict(tokens=[["a"], [3]]), "tokens"),
    (dict(lengths=np.array([0, 0], np.int32)), "lengths"),
    (dict(rewards=np.array([1.0], np.float32)), "rewards"),
    (dict(metrics={"bogus": np.zeros((2, 2), np.float32)}), "unknown group metric"),
    (dict(metrics={"kl": np.zeros((2, GROUP_MAX_CELLS), np.float32)}), "at most"),
    (dict(metrics={"kl": np.zeros((2, 1), np.float32)}), "tokens 2"),
])
def test_a_malformed_group_is_rejected_whole_and_named(bad, why):
    store = Store(clock=lambda: T)
    store.apply(hostile_group(**bad))
    state = store.snapshot()
    assert state.group is None and any(why in p for p in state.problems), state.problems


def test_an_older_group_never_replaces_a_newer_one():
    store = Store(clock=lambda: T)
    store.apply(hostile_group(step=5))
    store.apply(hostile_group(step=4))
    assert store.snapshot().group.step == 5


def test_views_without_data_say_so():
    state = Store(clock=lambda: T).snapshot()
    assert "no training update yet" in layout.render_screen(state, ViewState(mode="charts"), 80, 24, T, MONO).text()
    assert "no rollout group yet" in layout.render_screen(state, ViewState(mode="group"), 80, 24, T, MONO).text()


def test_a_scalar_the_run_never_logged_gets_no_chart():
    hist = Store(clock=lambda: T)
    hist.apply(TrainingState(step=0, reward_mean=0.5, kl=0.1))
    hist.apply(TrainingState(step=1, reward_mean=0.6, kl=0.2))
    keys = [m.series.key for m in charts.models(hist.snapshot(), ViewState(mode="charts"))]
    assert keys == ["reward_mean", "kl", "loss", "tokens_per_sec"]  # loss and tok/s default to 0.0: logged


def test_plain_log_prints_one_compact_line_per_update_with_every_scalar():
    out = io.StringIO()
    log = PlainLog(out)
    log.feed(TrainingState(step=7, reward_mean=0.5, reward_std=0.1, kl=0.01, loss=-0.2, tokens_per_sec=900,
                           policy_entropy=1.5, clip_fraction=0.05, grad_norm=0.7, learning_rate=6.9e-4,
                           update_tokens_per_sec=15000))
    line = out.getvalue().strip()
    for part in ("train step 7", "reward 0.500±0.100", "kl 0.0100", "loss -0.2000", "900 tok/s", "entropy 1.500",
                 "clip 0.050", "grad 0.700", "lr 6.90e-04", "update 15000 tok/s"):
        assert part in line
    assert "\n" not in line and "\x1b" not in line


def test_ema_is_debiased():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx((2.0, 2.0, 2.0))
    assert chart_model(SERIES[1], [], None) is None


def test_long_completions_wrap_in_order_and_count_what_is_left_out():
    words = [f"w{i}" for i in range(60)]
    ev = hostile_group(prompts=["q"], texts=["x", "y"], tokens=[words, ["a"]],
                       lengths=np.array([60 + 25, 1], np.int32),
                       metrics={m: np.zeros((2, 60), np.float32) for m in GROUP_METRICS})
    store = Store(clock=lambda: T)
    store.apply(ev)
    state = store.snapshot()
    for w, h in ((80, 24), (120, 40)):
        lines = layout.render_screen(state, ViewState(mode="group"), w, h, T, MONO).text().splitlines()
        assert lines[4].startswith("▶ #1")  # reward 1.0 first
        start = next(i for i, line in enumerate(lines) if line.startswith("  #0"))
        shown = []
        for line in lines[start:]:
            if line[2:3] == "#" and line is not lines[start]:
                break
            part = line[group.HEAD + 1:].split()
            if part and part[0].startswith("w"):
                shown += part
        assert shown[-1].startswith("+")
        toks, rest = shown[:-1], int(shown[-1][1:])
        assert toks == words[:len(toks)] and len(toks) > 20  # several lines, in order
        assert rest == 85 - len(toks)


def test_a_compare_file_that_is_not_a_log_is_one_line_and_exit_2(tmp_path, capsys):
    from vlmrl.utils.tui_live import main

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\x1b[2Jnot a log\n")
    assert main(["--replay", RUN_A, "--compare", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"--compare {bad}:") and "\n" not in err and "\x1b" not in err
    assert main(["--replay", RUN_A, "--compare", str(tmp_path / "missing.jsonl")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["--synthetic", "--compare", RUN_B])
    assert exc.value.code == 2
