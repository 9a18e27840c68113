"""Panels that keep state between frames (the decode panel's recent-token sweep) draw
exactly what a panel with no memory would draw, whatever order tokens arrive in.

The sweep only touches the slots of records that left or arrived since the last frame;
a bug there shows as a stale row. Hypothesis drives in-order tokens, tokens at a stride, duplicates (a
callback delivered twice), late tokens, a new generation restarting at step 0, batch-row
switches and resizes, and each frame is compared with a render from a cleared sweep.
The layout's panel and row caches are held to the same rule: whole screens against
renders from empty caches.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Clock, decode_event, screen_text
from vlmrl.instrument.events import DecodeState
from vlmrl.utils.tui import layout
from vlmrl.utils.tui.palette import COLOR
from vlmrl.utils.tui.panels import decode
from vlmrl.utils.tui.render_cache import RenderCache
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.view import ViewState

TEXTS = ["a", " the", "中文", "e\u0301", "\x1b[31m", "🙂", "long token text here", "\u202eevil", ""]

move = st.tuples(st.sampled_from(["next", "next", "next", "skip", "skip", "dup", "late", "restart"]),
                 st.integers(0, 1),  # batch row of the event
                 st.sampled_from(TEXTS),
                 st.floats(0, 1, allow_nan=False),
                 st.sampled_from([None] * 12 + ["b", (52, 20), (40, 9), (60, 30), (30, 6)]))


def _grid(canvas):
    return [("".join(r), tuple(s)) for r, s in zip(canvas.chars, canvas.styles)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(move, min_size=1, max_size=150))
def test_recent_list_with_memory_equals_a_fresh_render(moves):
    store = Store(clock=lambda: 0.0, started_at=0.0)
    view = ViewState()
    size = (52, 20)
    step = {0: 0, 1: 0}
    gen = {0: 0, 1: 0}
    cache = RenderCache()  # what the live loop carries from frame to frame
    for kind, b, text, prob, action in moves:
        if kind in ("next", "skip"):  # skip: taps at a stride emit every few steps
            step[b] += 1 if kind == "next" else 3
            s = step[b]
        elif kind == "dup":
            s = step[b]
        elif kind == "late":
            s = max(0, step[b] - 3)
        else:  # a new generate() call: steps restart
            gen[b] += 1
            step[b] = s = 0
        store.apply(DecodeState(step=s, token_text=text, token_prob=prob, token_id=len(text), seq_index=b,
                                batch_size=2, generation=gen[b], cache_len=s + 5, cache_max=64))
        if action == "b":
            view = view.replace(batch_index=view.batch_index + 1)
        elif action is not None:
            size = action
        state = store.snapshot()
        with_memory = decode.render(state, view, size[0], size[1], 0.0, COLOR, cache)
        fresh = decode.render(state, view, size[0], size[1], 0.0, COLOR, RenderCache())
        assert _grid(with_memory) == _grid(fresh)


def test_a_new_store_never_reuses_another_stores_cached_panels():
    """A replay rebuilds a Store per seek: equal version numbers must not reuse a panel."""
    a, b = Store(clock=Clock(1.0)), Store(clock=Clock(1.0))
    a.apply(decode_event(1, text=" first"))
    b.apply(decode_event(1, text=" second"))
    ta = screen_text(a, size=(120, 40), now=1.0)
    tb = screen_text(b, size=(120, 40), now=1.0)
    assert '" first"' in ta and '" second"' in tb and '" first"' not in tb


def test_cached_screens_equal_fresh_renders_frame_by_frame():
    """The layout reuses panel canvases and shares unchanged rows with the previous
    screen; every screen must still equal a render from empty caches, and a screen
    already handed out must never change afterwards."""
    from vlmrl.utils.tui.synthetic import SyntheticRun

    clock = Clock(0.0)
    store = Store(clock=clock, started_at=0.0)
    run = SyntheticRun(seed=3, prefill_walk=4, clock=lambda: 1000.0 + clock.t)
    events = run.events()
    view = ViewState()
    kept = []
    cache = RenderCache()
    for i in range(120):
        clock.t = i / 20.0
        for _ in range(3):
            store.apply(next(events))
        state = store.snapshot()
        screen = layout.render_screen(state, view, 160, 50, clock.t, COLOR, cache=cache)
        kept.append((screen, [list(r) for r in screen.chars], [list(r) for r in screen.styles]))
        fresh = layout.render_screen(state, view, 160, 50, clock.t, COLOR, cache=RenderCache())
        assert fresh.chars == screen.chars and fresh.styles == screen.styles, i
    for screen, chars, styles in kept:
        assert screen.chars == chars and screen.styles == styles


def test_rows_shared_between_canvases_are_immutable():
    """A row that sits in more than one place (two canvases, two frames, two rows of one
    canvas) is a tuple: a panel that writes into a shared row fails instead of changing
    every canvas that holds it."""
    from vlmrl.utils.tui.synthetic import SyntheticRun

    clock = Clock(0.0)
    store = Store(clock=clock, started_at=0.0)
    events = SyntheticRun(seed=5, prefill_walk=4, clock=lambda: 1000.0 + clock.t).events()
    cache = RenderCache()
    canvases = {}  # held, so no id is reused
    for i in range(60):
        clock.t = i / 20.0
        for _ in range(3):
            store.apply(next(events))
        layout.render_screen(store.snapshot(), ViewState(), 160, 50, clock.t, COLOR, cache=cache)
        for _, canvas in cache.panels.values():
            canvases[id(canvas)] = canvas
    seen = {}
    for canvas in canvases.values():
        for rows in (canvas.chars, canvas.styles):
            for y, row in enumerate(rows):
                seen.setdefault(id(row), [row, set()])[1].add((id(canvas), id(rows), y))
    shared = [row for row, places in seen.values() if len(places) > 1]
    assert shared, "the panels share rows (title rules, blank rows, cached token rows)"
    assert all(type(row) is tuple for row in shared), [type(r) for r in shared if type(r) is not tuple][:3]
