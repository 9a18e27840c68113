"""The dashboard's plan view (key k) on a real terminal emulator (pyte), from a real run.

A tiny PPO run records its log; the log is replayed into a Store and the plan view is
drawn by the real renderer and frame encoder. The screen must show the planner's figures
and, beside them, the bytes the run itself reported: the arrays it holds and the KV cache
its sampler allocated (checked against the cache the sampler really built).
"""
import pyte
import pytest

from vlmrl.instrument.events import DecodeState, MemoryPlan, RunInfo
from vlmrl.utils.tui import layout
from vlmrl.utils.tui.frame import FrameEncoder
from vlmrl.utils.tui.palette import COLOR, MONO
from vlmrl.utils.tui.panels.common import fmt_bytes
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.view import ViewState, handle_key


def _screen(store, width, height, theme=COLOR, depth="256"):
    view = handle_key(ViewState(), "k")
    assert view.mode == "plan"
    canvas = layout.render_screen(store.snapshot(), view, width, height, 0.0, theme)
    screen = pyte.Screen(width, height)
    pyte.ByteStream(screen).feed(FrameEncoder(depth).encode(canvas))
    assert screen.display == [canvas.row_text(y) for y in range(height)]
    return screen.display


def _line(display, label):
    hits = [row for row in display if row.strip().startswith(label)]
    assert len(hits) == 1, (label, display)
    return hits[0]


@pytest.mark.slow
def test_plan_view_of_a_recorded_tiny_run_shows_plan_beside_the_runs_bytes(tmp_path, kv_caches):
    from vlmrl.core.train import run_training
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.log_read import read_log

    caches = kv_caches
    log = tmp_path / "run.jsonl"
    run_training(["--env", "colors", "--steps", "2", "--batch", "2", "--group", "2", "--quiet", "--record", str(log),
                  "--no_compile_cache"], bus=Bus())
    header, events, stats = read_log(str(log))
    assert stats.garbage == 0
    plans = [e for e in events if isinstance(e, MemoryPlan)]
    assert len(plans) == 1
    plan = plans[0]
    kv_nbytes = int(caches[0].k.size * caches[0].k.dtype.itemsize * 2)
    assert plan.kv_bytes == kv_nbytes  # the live plan is exact where it can be
    assert plan.weights_bytes == plan.held_weights_bytes and plan.optimizer_bytes == plan.held_optimizer_bytes

    store = Store()
    if header.get("run_info") is not None:
        store.apply(header["run_info"])
    for ev in events:
        store.apply(ev)
    assert not [p for p in store.snapshot().problems if "memory_plan" in p or "MemoryPlan" in p]
    display = _screen(store, 120, 30)
    text = "\n".join(display)
    assert "MEMORY PLAN" in text and plan.model_name in text
    row = _line(display, "policy weights")
    assert row.count(fmt_bytes(plan.weights_bytes)) == 2  # plan and run agree
    row = _line(display, "optimizer (Adam mu, nu)")
    assert row.count(fmt_bytes(plan.optimizer_bytes)) == 2
    row = _line(display, "KV cache, contiguous")
    assert row.count(fmt_bytes(kv_nbytes)) == 2  # planned and allocated by the sampler
    assert "n/a" in _line(display, "gradients (update)")  # the run does not report them
    peak = _line(display, "PEAK per device")
    assert fmt_bytes(plan.per_device_bytes) in peak
    run = store.snapshot().run
    if run.memory_source == "host":  # a CPU run: the run's figure is the process's RSS, said so
        assert "host RSS" in peak and fmt_bytes(run.device_memory_in_use) in peak


def _synthetic_store(device=True):
    store = Store()
    store.apply(RunInfo(model_name="2b", num_layers=28, num_heads=16, dtype="bfloat16", max_cache=1222, batch=64,
                        device_kind="NVIDIA H100", device_memory_in_use=(60 << 30) if device else None,
                        device_memory_limit=(80 << 30) if device else None))
    store.apply(MemoryPlan(model_name="2b", dtype="bfloat16", optimizer_dtype="float32",
                           mesh="data=1,fsdp=4,tensor=1", rows=64, cache_slots=1222, weights_bytes=1 << 30,
                           kv_bytes=3 << 30, per_device_bytes=50 << 30, peak_phase="update"))
    store.apply(DecodeState(step=5, cache_len=200, cache_max=1222, kv_bytes=200 * 114688 * 64))
    return store


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (40, 10)])
@pytest.mark.parametrize("depth,theme", [("truecolor", COLOR), ("none", MONO)])
def test_plan_view_fits_every_size_and_says_what_was_not_measured(size, depth, theme):
    display = _screen(_synthetic_store(), *size, theme=theme, depth=depth)
    text = "\n".join(display)
    assert "MEMORY PLAN" in text
    if size[1] >= 24:
        assert fmt_bytes(60 << 30) in _line(display, "PEAK per device")  # the device's own figure
        assert "n/a" in _line(display, "activations (update)")
    without = _screen(_synthetic_store(device=False), *size, theme=theme, depth=depth)
    if size[1] >= 24:
        assert "n/a" in _line(without, "PEAK per device") and "device memory" in _line(without, "PEAK per device")


def test_plan_view_before_any_plan_says_so_and_k_goes_back():
    store = Store()
    display = _screen(store, 100, 20)
    assert any("no memory plan yet" in row for row in display)
    view = handle_key(handle_key(ViewState(), "k"), "k")
    assert view.mode == "dashboard"
    assert handle_key(handle_key(ViewState(), "k"), "KEY_ESCAPE").mode == "dashboard"
