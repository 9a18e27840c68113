"""The dashboard as a terminal shows it: real frame bytes from TUI-CORE's encoder fed to
pyte (a terminal emulator), full repaints and diff streams, in colour and without."""
from __future__ import annotations

import re
import unicodedata

import pyte
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import EXPECTED, META, SIZES, T0, Clock, decode_event, scenario
from vlmrl.instrument.events import CreditState, TrainingState
from vlmrl.utils.tui import layout
from vlmrl.utils.tui.frame import FrameEncoder
from vlmrl.utils.tui.palette import COLOR, MONO
from vlmrl.utils.tui.render_cache import RenderCache
from vlmrl.utils.tui.view import ViewState, handle_key


def strip_marks(text: str) -> str:
    return "".join(ch for ch in text if not unicodedata.combining(ch))


def terminal(width, height):
    screen = pyte.Screen(width, height)
    return screen, pyte.ByteStream(screen)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("depth,theme", [("truecolor", COLOR), ("none", MONO)])
def test_every_panel_on_a_real_terminal_screen(size, depth, theme):
    canvas = layout.render_screen(scenario().snapshot(), ViewState(), size[0], size[1], T0 + 0.5, theme, meta=META)
    data = FrameEncoder(depth).encode(canvas)
    if depth == "none":
        assert not re.search(rb"\x1b\[[0-9;]*[34]8;[25];[0-9;]*m", data)  # no colour SGR at all
    screen, stream = terminal(*size)
    stream.feed(data)
    shown = "\n".join(screen.display)
    for panel, needles in EXPECTED.items():
        for needle in needles:
            assert needle in shown, f"{panel}: {needle!r} not on the {size} terminal:\n{shown}"
    assert screen.display == [canvas.row_text(y) for y in range(size[1])]


def test_diff_stream_equals_a_fresh_full_render():
    """Frames of a live session (events, flashing clock, keys, a resize) sent as diffs
    leave the terminal showing exactly what a fresh full render shows."""
    clock = Clock(T0)
    store = scenario(clock)
    cache = RenderCache()  # carried from frame to frame, as the live loop does
    view = ViewState()
    enc = FrameEncoder("256")
    size = (120, 40)
    screen, stream = terminal(*size)
    keys = {5: "s", 9: "[", 13: "b", 17: "?", 19: "?", 23: "p", 27: "]"}
    canvas = None
    for i in range(32):
        clock.t += 0.037
        if i == 20:
            size = (100, 30)
            screen.resize(size[1], size[0])
            enc.invalidate()
        store.apply(decode_event(13 + i, text=f" t{i}" if i % 3 else "猫\u0301", seq=i % 2,
                                 wall_time=2000.0 + i))
        if i % 8 == 0:
            store.apply(TrainingState(step=8 + i, reward_mean=0.1 * i, kl=0.001 * i))
            store.apply(CreditState(tokens=["x", "y"], credits=[0.1 * i, -0.2], step=8 + i))
        if i in keys:
            view = handle_key(view, keys[i], store.snapshot())
        canvas = layout.render_screen(store.snapshot(), view, size[0], size[1], clock.t, COLOR,
                                      meta={"dropped": i, "fps": 20.0}, cache=cache)
        stream.feed(enc.encode(canvas))
    fresh_screen, fresh_stream = terminal(*size)
    fresh_stream.feed(FrameEncoder("256").encode(canvas))
    assert screen.display == fresh_screen.display
    # pyte keeps a combining mark after a wide char elsewhere: compare base characters
    assert [strip_marks(r) for r in screen.display] == [strip_marks(canvas.row_text(y)) for y in range(size[1])]


def test_unchanged_frame_sends_nothing():
    store = scenario()
    enc = FrameEncoder("256")
    state = store.snapshot()
    cache = RenderCache()
    first = layout.render_screen(state, ViewState(flash_hz=0), 120, 40, T0 + 5.0, COLOR, meta=META, cache=cache)
    assert enc.encode(first)
    again = layout.render_screen(state, ViewState(flash_hz=0), 120, 40, T0 + 5.2, COLOR, meta=META, cache=cache)
    assert enc.encode(again) == b""


ACTIONS = st.one_of(
    st.tuples(st.just("decode"), st.integers(1, 60), st.integers(0, 1), st.sampled_from([" a", "猫", "\x1b[1m", "é"])),
    st.tuples(st.just("train"), st.integers(0, 30), st.floats(-1, 1), st.just(None)),
    st.tuples(st.just("key"), st.sampled_from(list("sp[]b?me")), st.just(0), st.just(None)),
    st.tuples(st.just("resize"), st.integers(40, 130), st.integers(10, 45), st.just(None)),
    st.tuples(st.just("tick"), st.floats(0.01, 2.0), st.just(0), st.just(None)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, min_size=1, max_size=25))
def test_any_diff_stream_leaves_the_fresh_render_on_screen(actions):
    """Cached panels, reused rows and reused screens never leave stale cells behind."""
    clock = Clock(T0)
    store = scenario(clock)
    cache = RenderCache()  # carried from frame to frame, as the live loop does
    view = ViewState()
    size = (100, 30)
    enc = FrameEncoder("256")
    screen, stream = terminal(*size)
    canvas = None
    for kind, a, b, c in actions:
        if kind == "decode":
            store.apply(decode_event(a, text=c, seq=b, wall_time=3000.0 + a))
        elif kind == "train":
            store.apply(TrainingState(step=a, reward_mean=b, kl=abs(b)))
        elif kind == "key":
            view = handle_key(view, a, store.snapshot())
        elif kind == "resize":
            size = (a, b)
            screen.resize(b, a)
            enc.invalidate()
        else:
            clock.t += a
        canvas = layout.render_screen(store.snapshot(), view, size[0], size[1], clock.t, COLOR, meta=META,
                                      cache=cache)
        stream.feed(enc.encode(canvas))
    fresh, fresh_stream = terminal(*size)
    fresh_stream.feed(FrameEncoder("256").encode(canvas))
    assert screen.display == fresh.display
