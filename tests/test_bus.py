"""The event bus never blocks a producer, drops the oldest events when a consumer falls
behind, counts the drops per kind, and keeps consumers independent."""
import threading

from vlmrl.instrument.bus import Bus, default_bus
from vlmrl.instrument.events import DecodeState, TrainingState


def test_flood_with_a_stalled_consumer_never_blocks_and_counts_drops_by_kind():
    bus = Bus(capacity=100)
    stalled = bus.subscribe("stalled")  # never drains
    done = threading.Event()

    def produce():
        for i in range(20_000):
            bus.publish(DecodeState(step=i) if i % 4 else TrainingState(step=i))
        done.set()

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    t.join(timeout=60)
    assert done.is_set(), "publish blocked on a consumer that never drains"
    assert len(stalled) == 100 and stalled.received == 20_000
    assert stalled.total_dropped == 19_900
    assert stalled.dropped["decode"] == 15_000 - 75 and stalled.dropped["training"] == 5_000 - 25
    kept = stalled.drain()
    assert [e.step for e in kept] == list(range(19_900, 20_000))  # the newest survive, oldest first


def test_concurrent_producers_and_a_draining_consumer_account_for_every_event():
    bus = Bus(capacity=50)
    sub = bus.subscribe("dashboard")
    got = []
    stop = threading.Event()

    def consume():
        while not stop.is_set():
            sub.wait(0.01)
            got.extend(sub.drain())

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    producers = [threading.Thread(target=lambda k=k: [bus.publish(DecodeState(step=i, seq_index=k))
                                                       for i in range(5_000)]) for k in range(4)]
    for p in producers:
        p.start()
    for p in producers:
        p.join(timeout=60)
    stop.set()
    consumer.join(timeout=10)
    got.extend(sub.drain())
    assert len(got) + sub.total_dropped == 20_000 == sub.received
    for k in range(4):  # per producer the surviving events stay in order
        steps = [e.step for e in got if e.seq_index == k]
        assert steps == sorted(steps)


def test_a_slow_consumer_does_not_starve_a_fast_one():
    bus = Bus(capacity=10)
    slow, fast = bus.subscribe("slow"), bus.subscribe("fast", capacity=1000)
    for i in range(500):
        bus.publish(DecodeState(step=i))
    assert len(fast.drain()) == 500 and fast.total_dropped == 0
    assert len(slow.drain()) == 10 and slow.total_dropped == 490


def test_wait_wakes_on_publish_and_times_out_when_idle():
    bus = Bus()
    sub = bus.subscribe("x")
    assert sub.wait(0.01) is False
    threading.Timer(0.05, lambda: bus.publish(DecodeState(step=1))).start()
    assert sub.wait(5.0) is True
    assert [e.step for e in sub.drain()] == [1]
    assert sub.wait(0.0) is False  # drained: the ready flag is cleared


def test_drain_with_limit_and_unsubscribe():
    bus = Bus()
    sub = bus.subscribe("x")
    bus.publish_many(DecodeState(step=i) for i in range(5))
    assert [e.step for e in sub.drain(limit=2)] == [0, 1]
    assert [e.step for e in sub.drain()] == [2, 3, 4]
    bus.unsubscribe(sub)
    bus.publish(DecodeState(step=9))
    assert sub.closed and sub.drain() == [] and bus.subscriptions == ()


def test_default_bus_is_one_process_wide_instance():
    assert default_bus() is default_bus()


def test_zero_capacity_is_a_clear_error():
    import pytest

    from vlmrl.instrument.bus import Subscription

    with pytest.raises(ValueError, match="'bad'.*capacity"):
        Subscription("bad", 0)


def test_subscribers_coming_and_going_mid_run_never_cost_the_others_an_event():
    """A recorder or a second dashboard attaching and leaving while taps publish: the
    producer never raises, and a subscription present throughout gets every event."""
    bus = Bus(capacity=100_000)
    steady = bus.subscribe("dashboard")
    errors = []
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            extra = [bus.subscribe(f"extra{i}", capacity=1 + i) for i in range(3)]
            for sub in reversed(extra):
                bus.unsubscribe(sub)

    def produce():
        try:
            for i in range(30_000):
                bus.publish(DecodeState(step=i))
        except Exception as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(timeout=60)
    stop.set()
    churner.join(timeout=10)
    assert not errors
    assert [e.step for e in steady.drain()] == list(range(30_000))


def test_live_tui_update_calls_are_its_own_methods_reaching_every_subscriber():
    """Plain classes: the producer's calls are methods (no instance attribute shadows
    them), and a subclass that overrides one is called."""
    from vlmrl.utils.tui_live import LiveTUI

    bus = Bus(capacity=8)
    sub = bus.subscribe("a")
    tui = LiveTUI(bus=bus)
    assert not {"update_decode", "update_training", "publish"} & set(vars(tui))
    assert "publish" not in vars(bus)
    tui.update_decode(DecodeState(step=1))
    tui.update_training(TrainingState(step=2))
    tui.publish(TrainingState(step=3))
    assert [e.step for e in sub.drain()] == [1, 2, 3]

    class Counting(LiveTUI):
        def update_decode(self, state):
            self.seen = state.step
            super().update_decode(state)

    c = Counting(bus=bus)
    c.update_decode(DecodeState(step=4))
    assert c.seen == 4 and [e.step for e in sub.drain()] == [4]
