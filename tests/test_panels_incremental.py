"""Panels that keep state between frames (the decode panel's recent-token sweep) draw
exactly what a panel with no memory would draw, whatever order tokens arrive in.

The sweep only touches the slots of records that left or arrived since the last frame;
a bug there shows as a stale row. Hypothesis drives in-order tokens, tokens at a stride, duplicates (a
callback delivered twice), late tokens, a new generation restarting at step 0, batch-row
switches and resizes, and each frame is compared with a render from a cleared sweep.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlmrl.instrument.events import DecodeState
from vlmrl.utils.tui.palette import COLOR
from vlmrl.utils.tui.panels import decode
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
    decode._SWEEPS.clear()
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
        with_memory = decode.render(state, view, size[0], size[1], 0.0, COLOR)
        memory = dict(decode._SWEEPS)  # the sweeps as the live loop would carry them on
        decode._SWEEPS.clear()
        fresh = decode.render(state, view, size[0], size[1], 0.0, COLOR)
        decode._SWEEPS.clear()
        decode._SWEEPS.update(memory)
        assert _grid(with_memory) == _grid(fresh)
