"""Key bindings: what each key changes, and forwarding to REPLAY's matrix/explorer views."""
from __future__ import annotations

import sys
import types

from conftest import META, T0, decode_event, scenario, screen_text
from vlmrl.instrument.events import ATTN_STATS
from vlmrl.utils.tui import layout
from vlmrl.utils.tui.palette import COLOR
from vlmrl.utils.tui.view import ViewState, handle_key


def press(view, keys, state=None):
    for k in keys:
        view = handle_key(view, k, state)
    return view


def test_dashboard_keys():
    state = scenario().snapshot()
    v = ViewState()
    assert press(v, "p", state).paused and not press(v, "pp", state).paused
    assert press(v, "?", state).show_help and not press(v, "??", state).show_help
    assert press(v, "s" * 3, state).stat == ATTN_STATS[3]
    assert press(v, "S", state).stat == ATTN_STATS[-1]
    assert press(v, "[[", state).layer_page == 2 and press(v, "[]]", state).layer_page == -1
    assert press(v, "b", state).batch_index == 1 and press(v, "bb", state).batch_index == 0  # batch of 2
    assert press(v, "x", state) == v and handle_key(v, "", state) == v and handle_key(v, None, state) == v
    assert press(v, "q", state) == v  # q belongs to the live loop


def test_modes_toggle_and_escape_returns():
    v = ViewState()
    assert press(v, "m").mode == "matrix" and press(v, "mm").mode == "dashboard"
    assert press(v, "e").mode == "explorer" and press(v, "em").mode == "matrix"
    assert handle_key(press(v, "e"), "KEY_ESCAPE").mode == "dashboard"


def test_other_keys_in_a_mode_go_to_its_panel(monkeypatch):
    seen = []
    fake = types.ModuleType("vlmrl.utils.tui.panels.explorer")

    def fake_key(view, key, state, cache):
        seen.append((view.mode, key, state, cache))
        return view.replace(mode_state={"explorer": key})

    fake.handle_key = fake_key
    monkeypatch.setitem(sys.modules, "vlmrl.utils.tui.panels.explorer", fake)
    v = press(ViewState(), "e")
    v = handle_key(v, "KEY_RIGHT", "STATE", "CACHE")
    assert seen == [("explorer", "KEY_RIGHT", "STATE", "CACHE")] and v.mode_state == {"explorer": "KEY_RIGHT"}
    assert handle_key(v, "s").stat_index == 0  # dashboard keys do not act in other modes
    assert handle_key(v, "p").paused  # global keys still do


def test_mode_screen_falls_back_when_the_panel_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "vlmrl.utils.tui.panels.matrix", None)  # import raises
    text = screen_text(scenario(), view=ViewState(mode="matrix"), size=(80, 24))
    assert "matrix view not available" in text
    assert "matrix" in text.splitlines()[-1]  # footer still there


def test_mode_screen_draws_the_panel_full_screen(monkeypatch):
    fake = types.ModuleType("vlmrl.utils.tui.panels.explorer")
    calls = []

    def render(state, view, width, height, now, theme, cache):
        from vlmrl.utils.tui.canvas import Canvas
        calls.append((width, height))
        c = Canvas(width, height)
        c.put(0, 0, "FAKE EXPLORER")
        return c

    fake.render = render
    monkeypatch.setitem(sys.modules, "vlmrl.utils.tui.panels.explorer", fake)
    c = layout.render_screen(scenario().snapshot(), ViewState(mode="explorer"), 100, 30, T0, COLOR, meta=META)
    assert calls == [(100, 29)] and c.row_text(0).startswith("FAKE EXPLORER")
    assert "explorer" in c.row_text(29)


def test_real_replay_panels_render_when_present():
    store = scenario()
    store.apply(decode_event(13, attention_row=[0.5, 0.5]))
    for mode in ("matrix", "explorer"):
        c = layout.render_screen(store.snapshot(), ViewState(mode=mode), 120, 40, T0, COLOR, meta=META)
        assert (c.width, c.height) == (120, 40)
