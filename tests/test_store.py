"""The Store: events reduced by type into snapshots; duplicated, reordered and malformed
events do no harm; snapshots never change after they are taken."""
from __future__ import annotations

import collections
import random

import numpy as np
from hypothesis import given, settings, strategies as st

from conftest import Clock, decode_event, run_info
from vlmrl.instrument.events import AttentionMatrix, CreditState, TrainingState
from vlmrl.utils.tui.store import HEAT_HZ, RECENT_TOKENS, Store


def stats(value: float, layers: int = 4, heads: int = 2) -> dict:
    return {"focus": np.full((layers, heads), value, np.float32)}


def test_events_dispatch_by_type_into_the_snapshot():
    clock = Clock(5.0)
    store = Store(clock=clock, started_at=1.0)
    store.apply(run_info())
    store.apply(decode_event(1, text=" hi"))
    store.apply(TrainingState(step=3, reward_mean=0.5, kl=0.01))
    store.apply(CreditState(tokens=["a"], credits=[1.0], step=3))
    store.apply(AttentionMatrix(layer=2, matrix=np.eye(3, dtype=np.float32)))
    s = store.snapshot()
    assert s.run.model_name == "qwen3vl-2b" and s.num_layers() == 28
    assert s.decode_for(0).token_text == " hi"
    assert s.training.step == 3 and s.credit.tokens == ["a"] and s.matrix.layer == 2
    assert dict(s.counts) == {"run_info": 1, "decode": 1, "training": 1, "credit": 1, "attention_matrix": 1}
    assert s.uptime(11.0) == 10.0
    assert s.decode_at[0] == 5.0


def test_recorded_dicts_are_accepted():
    store = Store(clock=Clock())
    store.apply(decode_event(4, text=" x").to_dict())
    assert store.snapshot().decode_for(0).step == 4


def test_duplicates_and_reordering_give_the_in_order_result():
    events = [decode_event(s, text=f" t{s}", attn_stats=stats(s / 10.0)) for s in range(1, 8)]
    ordered = Store(clock=Clock())
    for ev in events:
        ordered.apply(ev)
    rng = random.Random(0)
    for _ in range(20):
        shuffled = events + [rng.choice(events) for _ in range(5)]
        rng.shuffle(shuffled)
        store = Store(clock=Clock())
        for ev in shuffled:
            store.apply(ev)
        a, b = ordered.snapshot(), store.snapshot()
        assert b.decode_for(0).step == 7
        assert [r.step for r in b.recent[0]] == [r.step for r in a.recent[0]] == list(range(1, 8))
        np.testing.assert_array_equal(b.stats[0]["focus"], a.stats[0]["focus"])


def test_late_callback_never_overwrites_a_newer_layer():
    store = Store(clock=Clock())
    store.apply(decode_event(5, attn_stats=stats(0.9)))
    store.apply(decode_event(3, attn_stats=stats(0.1)))  # late arrival of an older step
    assert float(store.snapshot().stats[0]["focus"][0, 0]) == np.float32(0.9)
    assert store.snapshot().decode_for(0).step == 5


def test_snapshot_is_immutable_and_reused_until_something_changes():
    store = Store(clock=Clock())
    store.apply(decode_event(1, attn_stats=stats(0.2)))
    first = store.snapshot()
    assert store.snapshot() is first
    before = first.stats[0]["focus"].copy()
    store.apply(decode_event(2, attn_stats=stats(0.7)))
    second = store.snapshot()
    assert second is not first and second.version > first.version
    np.testing.assert_array_equal(first.stats[0]["focus"], before)  # old snapshot untouched
    assert len(first.recent[0]) == 1 and len(second.recent[0]) == 2
    assert second.decode_v > first.decode_v and second.train_v == first.train_v


def test_new_generation_starts_on_prefill_or_a_step_reset():
    store = Store(clock=Clock())
    for s in range(1, 20):
        store.apply(decode_event(s, wall_time=100.0 + s))
    store.apply(decode_event(0, phase="prefill", wall_time=200.0))
    assert [r.step for r in store.snapshot().recent[0]] == [0]
    for s in range(1, 20):
        store.apply(decode_event(s, wall_time=300.0 + s))
    store.apply(decode_event(1, wall_time=400.0))  # steps restarted without a prefill event
    assert [r.step for r in store.snapshot().recent[0]] == [1]
    store.apply(decode_event(0, phase="prefill", wall_time=10.0))  # stale duplicate: ignored as new gen
    assert [r.step for r in store.snapshot().recent[0]] == [0, 1]


def test_histories_are_bounded_and_sorted():
    store = Store(clock=Clock())
    for s in range(RECENT_TOKENS + 30):
        store.apply(decode_event(s, wall_time=1.0))
    for s in (5, 3, 9, 3):
        store.apply(TrainingState(step=s, reward_mean=float(s), kl=0.1 * s))
    snap = store.snapshot()
    assert len(snap.recent[0]) == RECENT_TOKENS and snap.recent[0][-1].step == RECENT_TOKENS + 29
    assert [h.step for h in snap.history] == [3, 5, 9]
    assert snap.training.step == 9  # the newest step, not the last arrival


def test_explorer_keeps_attention_rows_per_step_with_tokens():
    store = Store(clock=Clock())
    for s in range(1, 4):
        store.apply(decode_event(s, text=f" w{s}", cache_len=10 + s, attention_row=np.full(10 + s, 1 / (10 + s))))
    steps = store.snapshot().explorer[0]
    assert [(e.step, e.text, e.cache_len, e.row.shape[0]) for e in steps] == [
        (1, " w1", 11, 11), (2, " w2", 12, 12), (3, " w3", 13, 13)]


def test_malformed_input_is_reported_not_fatal():
    store = Store(clock=Clock())
    cases = [
        (decode_event(1, attn_stats={"focus": np.zeros(5, np.float32)}), "attn_stats: {'focus': array float32[5]} is not a valid"),
        (decode_event(2, attn_stats={"bogus": np.zeros((2, 2))}), "unknown attention stat 'bogus'"),
        (CreditState(tokens=["a", "b"], credits=[1.0], step=1), "2 tokens vs 1 credits"),
        (AttentionMatrix(matrix=np.zeros((2, 2, 2))), "matrix: array float64[2, 2, 2]"),
        (object(), "ignored event of type object"),
        ({"kind": "nope"}, "unknown event kind 'nope'"),
    ]
    for event, message in cases:
        store.apply(event)
        assert message in store.snapshot().problems[-1]
    snap = store.snapshot()
    assert len(snap.problems) == 4  # bounded: the newest few
    assert snap.credit is None and snap.matrix is None
    assert snap.decode_for(0).step == 2  # the rest of a bad event still counts


def test_meta_dropped_accepts_a_counter():
    snap = Store(clock=Clock()).snapshot()
    assert snap.dropped is None
    assert snap.with_meta({"dropped": collections.Counter(decode=3, training=1)}).dropped == 4
    assert snap.with_meta({"dropped": 2}).dropped == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2), st.floats(0, 1)), min_size=1, max_size=40))
def test_any_arrival_order_keeps_the_newest_step_per_row_and_layer(arrivals):
    store = Store(clock=Clock())
    newest = {}
    for step, row, v in arrivals:
        store.apply(decode_event(step, seq=row, attn_stats=stats(v), wall_time=1.0))
        if row not in newest or step >= newest[row][0]:
            newest[row] = (step, v)
    snap = store.snapshot()
    for row, (step, v) in newest.items():
        assert snap.decode_for(row).step == step
        assert float(snap.stats[row]["focus"][0, 0]) == np.float32(v)


def test_a_field_of_the_wrong_type_is_reported_not_raised():
    store = Store(clock=Clock())
    store.apply(decode_event(1, token_prob=None))
    assert "bad decode event" in store.snapshot().problems[-1]
    store.apply(decode_event(2))
    assert store.snapshot().decode_for(0).step == 2


def test_gap_is_measured_per_batch_row():
    clock = Clock(0.0)
    store = Store(clock=clock)
    for s in range(1, 6):
        clock.t += 0.25  # one decode step per 0.25 s; both rows arrive together
        store.apply(decode_event(s, seq=0))
        store.apply(decode_event(s, seq=1))
    snap = store.snapshot()
    assert abs(snap.gap_for(0) - 0.25) < 1e-9 and abs(snap.gap_for(1) - 0.25) < 1e-9
    assert Store(clock=clock).snapshot().gap_for(0) is None


def test_copy_is_independent_and_has_its_own_identity():
    store = Store(clock=Clock())
    store.apply(run_info())
    for s in range(1, 4):
        store.apply(decode_event(s, text=f" w{s}", attn_stats=stats(s / 10)))
    store.apply(TrainingState(step=1, reward_mean=0.5))
    twin = store.copy()
    a, b = store.snapshot(), twin.snapshot()
    assert b.store_id != a.store_id
    assert [r.step for r in b.recent[0]] == [1, 2, 3] and b.training.step == 1 and b.run is a.run
    np.testing.assert_array_equal(b.stats[0]["focus"], a.stats[0]["focus"])
    twin.apply(decode_event(4, text=" w4"))
    assert [r.step for r in store.snapshot().recent[0]] == [1, 2, 3]  # original untouched
    assert [r.step for r in twin.snapshot().recent[0]] == [1, 2, 3, 4]


def test_events_with_fields_of_the_wrong_type_are_rejected_whole():
    from vlmrl.utils.tui import layout
    from vlmrl.utils.tui.palette import COLOR
    from vlmrl.utils.tui.view import ViewState

    store = Store(clock=Clock())
    store.apply(decode_event(1, text=" ok"))
    bad = [decode_event(2, cache_len="12"), decode_event(3, vision_span=("a", "b")), decode_event(4, mrope_t=-1),
           decode_event(5, vision_grid=(1, 2)), run_info(num_layers="many"), run_info(deepstack_layers=("x",))]
    for ev in bad:
        store.apply(ev)
        assert store.snapshot().problems[-1].startswith(f"bad {ev.kind} event")
    snap = store.snapshot()
    assert snap.decode_for(0).step == 1 and snap.run is None  # nothing of the bad events applied
    c = layout.render_screen(snap, ViewState(), 120, 40, 1.0, COLOR)
    assert "bad run_info event" in c.row_text(39) or "bad run_info event" in c.text()


def test_heatmap_shows_the_newest_stats_from_before_the_current_tick():
    """`heat` (what the heatmap shows) is the newest stats that arrived before the current
    1/HEAT_HZ tick began; `stats` is always the newest. A held-back update shows when the
    next tick begins, with no new event."""
    tick = 1.0 / HEAT_HZ
    clock = Clock(10.0 + 0.5 * tick)  # mid-tick times: no float rounding at the boundaries
    store = Store(clock=clock)
    store.apply(decode_event(1, attn_stats=stats(0.1)))
    store.apply(decode_event(2, attn_stats=stats(0.2)))
    first = store.snapshot()
    assert float(first.heat[0]["focus"][0, 0]) == np.float32(0.2)  # nothing older: the newest shows
    assert first.heat_step[0] == 2
    clock.t = 10.0 + 1.3 * tick
    store.apply(decode_event(3, attn_stats=stats(0.9)))
    held = store.snapshot()
    assert float(held.stats[0]["focus"][0, 0]) == np.float32(0.9)
    assert float(held.heat[0]["focus"][0, 0]) == np.float32(0.2)  # arrived in this tick: held back
    assert held.heat_step[0] == 2 and held.heat_version(0) == first.heat_version(0)
    assert store.snapshot() is held
    clock.t = 10.0 + 1.7 * tick
    store.apply(decode_event(4, attn_stats=stats(0.7)))
    assert float(store.snapshot().heat[0]["focus"][0, 0]) == np.float32(0.2)
    clock.t = 10.0 + 2.2 * tick
    later = store.snapshot()  # no event since: the new tick alone brings the newest values
    assert float(later.heat[0]["focus"][0, 0]) == np.float32(0.7)
    assert later.heat_step[0] == 4 and later.heat_version(0) != held.heat_version(0)
    assert store.snapshot() is later


def test_heatmap_is_a_function_of_arrival_times_and_clock():
    """A store that saw every event (snapshots in between) and one that applies them all
    at once show the same heatmap, as a replay rebuilt from a log must."""
    times = [10.01, 10.05, 10.21, 10.25, 10.3, 10.41, 10.42]
    clock_a, clock_b = Clock(), Clock()
    a, b = Store(clock=clock_a), Store(clock=clock_b)
    for s, t in enumerate(times, start=1):
        clock_a.t = clock_b.t = t
        ev = decode_event(s, attn_stats=stats(s / 10))
        a.apply(ev)
        a.snapshot()
        b.apply(ev)
    for now in (10.42, 10.5, 10.63):
        clock_a.t = clock_b.t = now
        ha, hb = a.snapshot(), b.snapshot()
        assert ha.heat_step == hb.heat_step and ha.heat_version(0) == hb.heat_version(0)
        np.testing.assert_array_equal(ha.heat[0]["focus"], hb.heat[0]["focus"])
    assert ha.heat_step[0] == 7


def test_new_generation_stats_show_at_once():
    clock = Clock(10.0)
    store = Store(clock=clock)
    store.apply(decode_event(5, attn_stats=stats(0.9), wall_time=100.0))
    clock.t += 1.0
    store.apply(decode_event(6, attn_stats=stats(0.8), wall_time=101.0))
    assert store.snapshot().heat_step[0] == 5  # held back within the tick
    store.apply(decode_event(0, phase="prefill", attn_stats=stats(0.3), wall_time=200.0))
    snap = store.snapshot()  # same tick, but a new generation: nothing stale is shown
    assert float(snap.heat[0]["focus"][0, 0]) == np.float32(0.3) and snap.heat_step[0] == 0
