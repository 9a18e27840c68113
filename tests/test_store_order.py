"""Unordered tap callbacks: the store's result does not depend on the order events arrive.

The events come from the real sampler (tiny Qwen3-VL, taps on, two generate calls); the
store then gets them in every order the callbacks can take: as they arrived, each
generation's prefill at every position among its decode steps, and stragglers of the
first call after the second call's events."""
import jax
import numpy as np
import pytest
from flax import nnx

from vlmrl.core.sampling import Sampler, SamplingConfig
from vlmrl.instrument.bus import Bus
from vlmrl.instrument.events import DecodeState
from vlmrl.instrument.taps import TapConfig
from vlmrl.utils.tui.store import Store


@pytest.fixture(scope="module")
def two_calls():
    from vlmrl.models.qwen3vl import Qwen3VL, Qwen3VLConfig

    model = Qwen3VL(Qwen3VLConfig.tiny(vocab_size=512), rngs=nnx.Rngs(0))
    bus = Bus(capacity=10_000)
    sub = bus.subscribe("test")
    s = Sampler(model, SamplingConfig(stop_ids=(), initial_stride=1), tap=TapConfig(enabled=True, max_rows=1),
                bus=bus, detok=lambda i: f"<t{i}>")
    s.host.target_rate = 1e9  # keep the stride at 1: every step emits
    calls = []
    for seed in (1, 2):
        s.generate(prompts=[np.arange(3, 12) + seed], max_new_tokens=6, temperature=1.0,
                   key=jax.random.PRNGKey(seed))
        calls.append([e for e in sub.drain() if isinstance(e, DecodeState)])
    return calls


def _final(events):
    store = Store(clock=lambda: 0.0)
    for ev in events:
        store.apply(ev)
    snap = store.snapshot()
    return [(r.step, r.token_id) for r in snap.recent[0]], store.stale_events


def test_the_sampler_really_numbers_its_calls(two_calls):
    first, second = two_calls
    assert {e.generation for e in first} == {1} and {e.generation for e in second} == {2}
    assert sorted(e.step for e in first) == list(range(6)) and [e.phase for e in first].count("prefill") == 1


def test_prefill_after_its_decode_steps_keeps_them(two_calls):
    _, second = two_calls
    ordered = sorted(second, key=lambda e: e.step)
    want, _ = _final(ordered)
    assert [s for s, _ in want] == list(range(6))
    prefill, decodes = ordered[0], ordered[1:]
    for at in range(len(decodes) + 1):  # the prefill at every position, as CPU callbacks do
        got, _ = _final(decodes[:at] + [prefill] + decodes[at:])
        assert got == want, at


def test_any_order_within_and_stragglers_across_calls(two_calls):
    first, second = two_calls
    want, _ = _final(sorted(first, key=lambda e: e.step) + sorted(second, key=lambda e: e.step))
    assert want == _final(sorted(second, key=lambda e: e.step))[0]
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = list(first), list(second)
        rng.shuffle(a)
        rng.shuffle(b)
        cut = int(rng.integers(0, len(a) + 1))  # some of call 1 lands after call 2 began
        got, stale = _final(a[:cut] + b + a[cut:])
        assert got == want
        assert stale == len(a) - cut
