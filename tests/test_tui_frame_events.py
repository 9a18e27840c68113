"""Diff stream == fresh full render, over synthetic event sequences drawn by the real layout.

Hypothesis picks how many events arrive between frames, when the terminal is resized and
which keys are pressed; the bytes of every frame go to one pyte screen, and after each
frame that screen must equal a fresh screen fed only the full repaint of that frame.
"""
from __future__ import annotations


import pyte
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlmrl.utils.tui import layout, theme
from vlmrl.utils.tui.frame import FrameEncoder, full_bytes
from vlmrl.utils.tui.render_cache import RenderCache
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.synthetic import SyntheticRun
from vlmrl.utils.tui.view import ViewState, handle_key
from conftest import base_text, cells  # the same screen readers

EVENTS = SyntheticRun(num_layers=8, num_heads=6, batch=2, gen_tokens=10, prefill_walk=3, seed=3,
                      clock=iter(range(10**9)).__next__).take(120)


step = st.tuples(st.integers(0, 12),  # events applied before this frame
                 st.sampled_from([None, None, None, (80, 24), (120, 40), (61, 20), (45, 12)]),
                 st.sampled_from(["", "", "", "s", "[", "]", "b", "?", "p", "m", "e", "KEY_ESCAPE"]))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=2, max_size=12), st.sampled_from(theme.DEPTHS),
       st.floats(0, 10, allow_nan=False))
def test_diff_of_real_screens_equals_full_render(steps, depth, t0):
    store = Store(clock=lambda: 0.0, started_at=0.0)
    cache = RenderCache()  # carried from frame to frame, as the live loop does
    view = ViewState()
    palette = theme.palette_for_depth(depth)
    enc = FrameEncoder(depth)
    w, h = 80, 24
    screen = pyte.Screen(w, h)
    pos = 0
    for i, (n, size, key) in enumerate(steps):
        for ev in EVENTS[pos:pos + n]:
            store.apply(ev)
        pos += n
        if size is not None and size != (w, h):
            w, h = size
            screen.resize(h, w)
        if key:
            view = handle_key(view, key, store.snapshot())
        now = t0 + 0.1 * i  # flashing changes cells between frames too
        canvas = layout.render_screen(store.snapshot(), view, w, h, now, palette, cache=cache)
        pyte.ByteStream(screen).feed(enc.encode(canvas))
        fresh = pyte.Screen(w, h)
        pyte.ByteStream(fresh).feed(full_bytes(canvas, depth))
        assert screen.display == fresh.display
        assert cells(screen) == cells(fresh)
        assert base_text(screen.display) == base_text("".join(r) for r in canvas.chars)


def test_layout_damage_spans_give_the_same_screen_as_a_full_compare():
    """The layout names the spans it rebuilt (Canvas.damage); the encoder scans only those
    when the base is the frame it sent. That must never change what reaches the screen."""
    store = Store(clock=lambda: 0.0, started_at=0.0)
    cache = RenderCache()  # carried from frame to frame, as the live loop does
    view = ViewState()
    palette = theme.palette_for_depth("256")
    hinted, plain = FrameEncoder("256"), FrameEncoder("256")
    s_hinted, s_plain = pyte.Screen(100, 30), pyte.Screen(100, 30)
    used = 0
    for i, ev in enumerate(EVENTS):
        store.apply(ev)
        canvas = layout.render_screen(store.snapshot(), view, 100, 30, 0.05 * i, palette, cache=cache)
        used += canvas.damage is not None and canvas.damage[0] is hinted.prev
        pyte.ByteStream(s_hinted).feed(hinted.encode(canvas))
        bare = canvas.copy()  # no damage: the encoder compares every row
        pyte.ByteStream(s_plain).feed(plain.encode(bare))
        assert s_hinted.display == s_plain.display
        assert cells(s_hinted) == cells(s_plain)
    assert used > len(EVENTS) // 2  # the spans were actually taken, not skipped
