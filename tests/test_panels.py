"""Panels through the real layout: titles and values on screen at the three reference
sizes, exact row widths, sanitised text, the heatmap ramp, flashing, paging and stats."""
from __future__ import annotations

import numpy as np
import pytest

from vlmrl.instrument.events import ATTN_STATS, CreditState, RunInfo, TrainingState
from vlmrl.utils.tui import layout, palette
from vlmrl.utils.tui.palette import COLOR, MONO
from vlmrl.utils.tui.panels import attention, credit, decode, flow, footer, header, kvcache, mrope, vision
from vlmrl.utils.tui.store import HEAT_HZ, Store
from vlmrl.utils.tui.view import ViewState, handle_key

from conftest import EXPECTED, H, L, META, SIZES, T0, Clock, decode_event, row_cells, run_info, scenario, screen_text

@pytest.mark.parametrize("size", SIZES)
def test_every_panel_title_and_values_on_screen(size):
    text = screen_text(scenario(), size=size)
    for panel, needles in EXPECTED.items():
        for needle in needles:
            assert needle in text, f"{panel}: {needle!r} missing at {size}:\n{text}"


@pytest.mark.parametrize("size", SIZES + [(40, 10), (41, 13), (59, 17), (99, 31), (149, 45), (300, 90)])
def test_screen_rows_exactly_terminal_width(size):
    c = layout.render_screen(scenario().snapshot(), ViewState(), size[0], size[1], T0, COLOR, meta=META)
    assert (c.width, c.height) == size
    for y in range(c.height):
        assert row_cells(c.chars[y]) == size[0], f"row {y} at {size}: {c.row_text(y)!r}"


PANEL_MODULES = [header, footer, decode, flow, attention, vision, mrope, credit, kvcache]


@pytest.mark.parametrize("mod", PANEL_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
@pytest.mark.parametrize("size", [(1, 1), (7, 2), (25, 3), (39, 9), (66, 30)])
def test_panel_canvas_is_exactly_its_size_empty_and_full(mod, size):
    for store in (Store(clock=Clock()), scenario()):
        c = mod.render(store.snapshot(), ViewState(), size[0], size[1], T0, COLOR)
        assert (c.width, c.height) == size
        for y in range(c.height):
            assert row_cells(c.chars[y]) == size[0]


def test_unmeasured_values_show_na_not_placeholders():
    store = Store(clock=Clock(1.0))
    store.apply(decode_event(1, attn_stats={}, vision_span=None, vision_grid=None, top_k=[]))
    text = screen_text(store, size=(120, 40), now=1.5)
    assert "reward n/a" in text and "KL n/a" in text and "loss n/a" in text  # no TrainingState yet
    assert "TOKEN CREDIT" in text and "no credit assigned yet" in text
    assert "focus: n/a" in text  # no attention stats in the event
    assert "KV n/a" in text  # no RunInfo: bytes unknown
    assert "alts n/a" in text
    assert "Token[n/a]" in text and "text only" in text


def test_hostile_token_text_is_sanitised_and_layout_holds():
    evil = "\x1b[2J\x1b]52;c;ZXZpbA==\x07\u202eevil\x9b31m猫\u0301"
    store = scenario()
    store.apply(decode_event(13, text=evil, top_k=[(1, evil, 0.5)]))
    store.apply(CreditState(tokens=[evil, "ok"], credits=[2.0, 1.0], step=8))
    for size in SIZES:
        c = layout.render_screen(store.snapshot(), ViewState(), size[0], size[1], T0, COLOR, meta=META)
        flat = "".join("".join(r) for r in c.chars)
        assert "\x1b" not in flat and "\x07" not in flat and "\x9b" not in flat and "\u202e" not in flat
        assert "␛[2J" in flat  # the escape is made visible, not executed
        for y in range(c.height):
            assert row_cells(c.chars[y]) == size[0]


def test_heatmap_ramp_thresholds():
    values = [0.0, 0.2499, 0.25, 0.4999, 0.5, 0.7499, 0.75, 1.0, float("nan"), -0.5, 1.7]
    expect = "░░▒▒▓▓██·░█"
    assert "".join(attention.GLYPHS[i] for i in attention.levels(np.array(values))) == expect
    assert "".join(palette.ramp_glyph(v) for v in values) == expect
    focus = np.zeros((2, len(values)), np.float32)
    focus[1] = values
    store = Store(clock=Clock())
    store.apply(decode_event(1, attn_stats={"focus": focus}))
    c = attention.render(store.snapshot(), ViewState(), 40, 8, 0.0, MONO)
    assert expect in c.text()


def test_hot_heads_flash_while_their_glyph_stays():
    store = scenario()
    view = ViewState(flash_hz=5.0)
    # hot heads toggle once per 1/flash_hz (half the indicators' rate), on heatmap ticks
    on, off = 0.0, 0.2
    assert view.heat_flash_on(on) and not view.heat_flash_on(off) and view.heat_flash_on(0.19)
    assert 0.2 * HEAT_HZ == int(0.2 * HEAT_HZ)
    a = attention.render(store.snapshot(), view, 40, 9, on, COLOR)
    b = attention.render(store.snapshot(), view, 40, 9, off, COLOR)
    assert a.text() == b.text()
    hot = [(y, x) for y in range(1, 8) for x in range(40) if a.chars[y][x] == "█"]
    cool = [(y, x) for y in range(1, 8) for x in range(40) if a.chars[y][x] == "░"]
    assert hot and cool
    assert all(a.styles[y][x] != b.styles[y][x] for y, x in hot)
    assert all(a.styles[y][x] == b.styles[y][x] for y, x in cool)


def _layer_labels(text: str):
    return [line.split()[0] for line in text.splitlines()[1:] if line.startswith("L") or line.startswith(" L")]


def test_layer_paging_with_keys_wraps():
    store = scenario()
    state = store.snapshot()
    view = ViewState(display_layers=6)
    render = lambda v: attention.render(state, v, 40, 7, T0, MONO).text()  # 6 layer rows, no legend
    assert _layer_labels(render(view)) == [f"L{i}" for i in range(22, 28)]
    view = handle_key(view, "[", state)
    assert _layer_labels(render(view)) == [f"L{i}" for i in range(16, 22)]
    assert "p2/5" in render(view)
    for _ in range(3):
        view = handle_key(view, "[", state)
    assert _layer_labels(render(view)) == ["L0", "L1", "L2", "L3"]  # the partial first page
    view = handle_key(view, "[", state)
    assert _layer_labels(render(view)) == [f"L{i}" for i in range(22, 28)]  # wrapped
    view = handle_key(view, "]", state)
    assert _layer_labels(render(view)) == ["L0", "L1", "L2", "L3"]


def test_stat_cycles_with_s_and_changes_cells():
    store = scenario()
    state = store.snapshot()
    view = ViewState()
    seen = []
    for _ in ATTN_STATS:
        text = attention.render(state, view, 40, 9, T0, MONO).text()
        seen.append((text.splitlines()[0], text.splitlines()[1]))
        view = handle_key(view, "s", state)
    titles = [t for t, _ in seen]
    assert [s in t for s, t in zip(("focus", "max weight", "vision share", "sink share"), titles)] == [True] * 4
    assert seen[1][1].split()[1] == "█" * H  # max = 0.9 everywhere
    assert seen[3][1].split()[1] == "░" * H  # sink = 0.1 everywhere
    assert view.stat == "focus"  # back to the start


def test_flow_shows_each_stage_figure_and_flashes_only_on_arrival():
    clock = Clock(10.0)
    store = Store(clock=clock)
    store.apply(run_info())
    for s in range(1, 5):
        clock.t += 0.1
        store.apply(decode_event(s, mrope_t=40 + s, mrope_h=40 + s, mrope_w=40 + s, kv_bytes=1024 * (100 + s)))
    st = store.snapshot()
    arrived = clock.t
    text = lambda now, w=110: flow.render(st, ViewState(), w, 4, now, MONO).text()
    lit, later = text(arrived + 0.01), text(arrived + 0.5)
    assert "⚡ STEP 4 arrived" in lit and "⚡" not in later
    # L27 H3's focus in stats_for is ((27 * 16 + 3) % 20) / 20
    for figure in ("mRoPE t44 h44 w44", "Q/K/V 16q 8kv ×128d", "Attention L27 H3 0.75", "slot 103 +1.0 KiB"):
        assert figure in lit and figure in later  # the same figures lit or not: no stage is timed
    assert "stages not timed" in later and "10 steps/s" in later
    narrow = text(arrived + 0.5, 60)  # the chain splits after Q/K/V onto two rows
    assert "mRoPE t44 h44 w44 → Q/K/V" in narrow and "Attention L27 H3 0.75 → KV write slot 103" in narrow
    tight = text(arrived + 0.5, 36)
    assert "mRoPE 44/44/44 → QKV 16/8×128 →" in tight and "Attn L27H3 0.75 → KV 103" in tight
    assert "idle" in flow.render(st, ViewState(), 60, 4, arrived + 5.0, MONO).row_text(0)


def test_kv_status_write_active_cleared():
    clock = Clock(10.0)
    store = Store(clock=clock)
    store.apply(run_info())
    store.apply(decode_event(1))
    st = store.snapshot()
    assert kvcache.status(st, 0, clock.t + 0.1) == "⚡ WRITE"  # the step just arrived: it wrote its K/V
    assert kvcache.status(st, 0, clock.t + 10.0) == "ACTIVE"
    store.apply(decode_event(2, cache_len=0, wall_time=5000.0))
    assert kvcache.status(store.snapshot(), 0, clock.t + 10.0) == "CLEARED"
    text = kvcache.render(store.snapshot(), ViewState(), 60, 6, clock.t + 10.0, MONO).text()
    assert "CLEARED" in text and "KV 0.0/448.0 MiB" in text


def test_credit_sorted_by_magnitude_with_signed_bars():
    store = scenario()
    c = credit.render(store.snapshot(), ViewState(), 60, 6, T0, MONO)
    lines = c.text().splitlines()[1:5]
    order = [ln.split('"')[1] for ln in lines]
    assert order == [" big", " cat", " a", " sat"]
    axis = lines[0].index("│")
    assert lines[0][axis - 1] == "█" and lines[0][axis + 1] == " "  # negative: left of the axis
    assert lines[1][axis + 1] == "█" and lines[1][axis - 1] == " "  # positive: right
    assert lines[0].startswith("▶")
    flash = [credit.render(store.snapshot(), ViewState(), 60, 6, t, COLOR) for t in (0.0, 0.2)]
    x = lines[0].index('"')
    assert flash[0].styles[1][x] != flash[1].styles[1][x]  # the top token flashes


def test_too_small_terminal_shows_a_message():
    text = screen_text(scenario(), size=(30, 8))
    assert "too small" in text and "30x8" in text


def test_help_overlay_lists_keys():
    store = scenario()
    view = handle_key(ViewState(), "?", store.snapshot())
    text = screen_text(store, view=view, size=(80, 24))
    assert "HELP" in text and "heatmap stat" in text and "page attention layers" in text
    assert "previous batch element" in text and "the run goes on" in text
    assert "HELP" not in screen_text(store, view=handle_key(view, "?"), size=(80, 24))


@pytest.mark.parametrize("source, want, not_want", [
    ("REPLAY 3/10 ⏸ 1x  decode step 2", ("step back / forward", "first / last step", "play / pause",
                                        "faster / slower", "q leaves the replay"), ("run goes on",)),
    ("ATTACH", ("q stops following the log",), ("run goes on", "step back")),
])
def test_help_overlay_says_what_q_does_and_lists_the_replay_keys(source, want, not_want):
    store = scenario()
    view = handle_key(ViewState(), "?", store.snapshot())
    text = screen_text(store, view=view, size=(100, 40), meta=dict(META, source=source))
    for needle in want:
        assert needle in text, needle
    for needle in not_want:
        assert needle not in text, needle


def test_footer_shows_pause_and_reset_hint():
    store = scenario()
    text = screen_text(store, view=ViewState(paused=True), size=(120, 40))
    assert "PAUSED" in text.splitlines()[-1]
    assert "reset" in text.splitlines()[-1]


def test_batch_key_switches_the_decode_row():
    store = scenario()
    store.apply(decode_event(12, text=" other", seq=1, cache_len=300))
    state = store.snapshot()
    view = handle_key(ViewState(), "b", state)
    assert view.batch_index == 1
    text = screen_text(store, view=view, size=(120, 40))
    assert '" other"' in text and "b1/2" in text
    assert handle_key(view, "b", state).batch_index == 0


def test_recent_tokens_sweep_one_row_per_step():
    """The recent list keeps each step on a fixed row (step mod rows): a new token changes
    one row plus the ▶ marker, so a frame diff stays small."""
    clock = Clock(0.0)
    store = Store(clock=clock)
    rows = 5
    frames = []
    for s in range(1, 10):
        store.apply(decode_event(s, text=f" w{s}", top_k=[]))
        c = decode.render(store.snapshot(), ViewState(), 60, 3 + rows, 0.0, MONO)
        frames.append([c.row_text(y) for y in range(3, 3 + rows)])
    last = frames[-1]
    by_step = {int(ln[1:6]): i for i, ln in enumerate(last)}
    assert sorted(by_step) == [5, 6, 7, 8, 9] and all(i == s % rows for s, i in by_step.items())
    assert last[9 % rows].startswith("▶") and sum(ln.startswith("▶") for ln in last) == 1
    for before, after in zip(frames[4:], frames[5:]):
        changed = [i for i in range(rows) if before[i] != after[i]]
        assert len(changed) == 2  # the new token's row and the old ▶ row (one cell)


def test_lit_indicator_flashes_at_flash_hz_with_its_colour():
    clock = Clock(10.0)
    store = Store(clock=clock)
    for s in range(1, 4):
        clock.t += 0.1
        store.apply(decode_event(s))
    st = store.snapshot()
    view = ViewState(flash_hz=8.0)  # on for 1/16 s, off for 1/16 s
    t_on = next(clock.t + k / 64 for k in range(16) if view.flash_on(clock.t + k / 64))
    t_off = next(t for t in (t_on + k / 64 for k in range(1, 8)) if not view.flash_on(t))
    assert t_off - clock.t < flow.ARRIVED_S  # both while the step counts as just arrived
    a = flow.render(st, view, 60, 4, t_on, COLOR)
    b = flow.render(st, view, 60, 4, t_off, COLOR)
    x = a.row_text(2).index("⚡ STEP")
    assert a.row_text(2) == b.row_text(2)
    assert a.styles[2][x].fg == palette.CYAN and a.styles[2][x] != b.styles[2][x]
    mono_on, mono_off = (flow.render(st, view, 60, 4, t, MONO) for t in (t_on, t_off))
    assert mono_on.styles[2][x].reverse and not mono_off.styles[2][x].reverse  # NO_COLOR still flashes


def test_tui_cores_synthetic_run_renders_every_panel():
    from vlmrl.utils.tui.synthetic import SyntheticRun

    clock = Clock(0.0)
    store = Store(clock=clock, started_at=0.0)
    run = SyntheticRun(seed=1, prefill_walk=4, clock=lambda: 1000.0 + clock.t)
    for ev in run.take(260):
        clock.t += 0.02
        store.apply(ev)
    for size in SIZES:
        text = screen_text(store, size=size, now=clock.t + 0.01)
        for title in ("VLMRL", "DECODE LIVE", "COMPUTATION FLOW", "ATTENTION FLOW", "VISION INJECTION @ Token[",
                      "mRoPE", "TOKEN CREDIT", "KV CACHE MEMORY", "reset"):
            assert title in text, (size, title)
        assert "n/a" not in text.split("KV CACHE MEMORY")[1].splitlines()[1]  # bytes known from RunInfo
    assert not store.snapshot().problems


def test_header_shows_the_run_status_until_training_starts():
    store = Store(clock=lambda: T0)
    store.apply(run_info(status="compiling rollout and update ..."))
    assert "compiling rollout and update" in screen_text(store)
    store.apply(run_info(status=""))
    store.apply(TrainingState(step=1, reward_mean=0.1))
    text = screen_text(store)
    assert "compiling" not in text and "step 1" in text


def test_reward_sparkline_keeps_the_unit_scale_when_rewards_lie_in_it():
    flat_low = palette.sparkline([0.2, 0.21, 0.2, 0.22], 4, scale=(0.0, 1.0))
    assert flat_low == palette.sparkline([0.2, 0.21, 0.2, 0.22], 4, scale=(0.0, 1.0))
    assert set(flat_low) <= set(palette.SPARK[:3])  # low rewards draw low, not stretched to full height
    assert palette.sparkline([0.0, 1.0], 2, scale=(0.0, 1.0)) == palette.SPARK[0] + palette.SPARK[-1]
    # outside [0, 1] (a shaped reward) the line scales to its own range
    assert palette.sparkline([-2.0, 3.0], 2, scale=(0.0, 1.0)) == palette.SPARK[0] + palette.SPARK[-1]
    assert palette.sparkline([0.2, 0.22], 2) == palette.SPARK[0] + palette.SPARK[-1]


@pytest.mark.parametrize("batch", [1, 64])
def test_footer_lists_every_key_with_its_label_at_160_columns_also_with_a_batch_index(batch):
    """At 160x50 the long key list (with k plan) fits beside the reset hint, also once `b`
    adds b1/64 to the status: the footer's dropped count (the header shows it too) gives way."""
    store = Store(clock=Clock(T0), started_at=0.0)
    store.apply(run_info(batch=batch))
    for s in range(1, 4):
        store.apply(decode_event(s, text=f" w{s}"))
    view = handle_key(ViewState(), "b", store.snapshot())
    lines = screen_text(store, view=view, size=(160, 50)).splitlines()
    foot = lines[-1]
    for k, label in footer.KEYS_LONG:
        assert f"{k} {label}" in foot, (k, foot)
    assert "reset" in foot and "k plan" in foot
    if batch > 1:
        assert "b1/64" in foot
    assert "dropped 3" in lines[0] or "dropped 3" in lines[1]
