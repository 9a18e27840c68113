"""Hypothesis: any event sequence (hostile text, NaN stats, odd shapes, missing fields)
at any terminal size renders a screen of exactly that size, with no escape byte from the
data, never an exception."""
from __future__ import annotations


import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import Clock, row_cells, run_info
from vlmrl.instrument.events import CreditState, DecodeState, TrainingState
from vlmrl.utils.tui import layout
from vlmrl.utils.tui.palette import COLOR, MONO
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.view import ViewState, handle_key

HOSTILE = ["\x1b[31m", "\x1b]52;c;aGk=\x07", "\x9b2J", "\u202e", "猫", "e\u0301", "\u200d", "\x00", "\t",
           "\n", "👩\u200d💻", "\ufe0f", "\x7f", "a"]
text = st.lists(st.sampled_from(HOSTILE), max_size=6).map("".join)
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.none())


@st.composite
def decode(draw):
    layers = draw(st.integers(1, 40))
    heads = draw(st.integers(1, 40))
    arr = draw(st.sampled_from([0.0, 0.3, 0.8, float("nan"), 2.0]))
    stats = {"focus": np.full((layers, heads), arr, np.float32)} if draw(st.booleans()) else {}
    span = draw(st.one_of(st.none(), st.tuples(st.integers(0, 50), st.integers(51, 300))))
    return DecodeState(step=draw(st.integers(0, 50)), token_id=draw(st.integers(0, 10**6)), token_text=draw(text),
                       token_prob=draw(st.floats(0, 1)), cache_len=draw(st.integers(0, 5000)),
                       cache_max=draw(st.integers(0, 4096)), seq_index=draw(st.integers(0, 3)),
                       batch_size=draw(st.integers(1, 4)), attn_stats=stats, vision_span=span,
                       vision_grid=draw(st.one_of(st.none(), st.just((1, 8, 8)))),
                       top_k=draw(st.lists(st.tuples(st.integers(0, 9), text, st.floats(0, 1)), max_size=4)),
                       mrope_t=draw(st.integers(0, 9999)), wall_time=draw(st.floats(0, 10)))


events = st.one_of(
    decode(),
    st.builds(TrainingState, step=st.integers(0, 99), reward_mean=st.floats(-1e9, 1e9), kl=number.map(lambda v: v or 0.0),
              policy_entropy=number, clip_fraction=number, tokens_per_sec=st.floats(0, 1e7)),
    st.builds(lambda toks, vals: CreditState(tokens=toks, credits=vals[:len(toks)] + [0.0] * (len(toks) - len(vals))),
              st.lists(text, max_size=20), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20)),
    st.just(run_info()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, max_size=12), st.integers(0, 260), st.integers(0, 80),
       st.lists(st.sampled_from(list("sp[]b?")), max_size=5), st.floats(0, 100), st.booleans())
def test_any_events_any_size_render_exactly(evs, width, height, keys, now, color):
    store = Store(clock=Clock(0.0))
    for ev in evs:
        store.apply(ev)
    state = store.snapshot()
    view = ViewState()
    for k in keys:
        view = handle_key(view, k, state)
    c = layout.render_screen(state, view, width, height, now, COLOR if color else MONO, meta={"dropped": 1})
    assert (c.width, c.height) == (width, height)
    for y in range(height):
        row = c.chars[y]
        assert row_cells(row) == width
        joined = "".join(row)
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in joined)
        assert "\u202e" not in joined
