"""Tap overhead: decode tokens/s with instrumentation off vs on (default TapConfig, target 30
emits/s) while a dashboard-like thread drains the bus, and the host bytes one emitted step
carries at two cache contexts.

Off and on runs are interleaved (alternating order) and compared as paired ratios within one
run, so machine noise shared by both cancels; the headline is the median paired ratio. On a
shared machine single pairs still swing (another process lands on one half of a pair), so
the table also gives the ratio of the two configurations' fastest runs (best-of-N, the
least disturbed estimate) and of their process CPU time. Random weights; no downloads.

    python scripts/bench_taps.py                       # tiny preset, CPU, about 1-2 minutes
    python scripts/bench_taps.py --preset 2b --dtype bfloat16 --new-tokens 512   # on a GPU
    python scripts/bench_taps.py --mesh data=2,fsdp=2   # sharded over 4 devices (fake CPU ones if needed)

With --mesh the weights are sharded by the mesh rules (vlmrl.core.mesh), the rows over
`data`, and both samplers run on the mesh; on a machine with fewer devices than the mesh
needs and no device count in XLA_FLAGS, the CPU is split into that many fake devices
(set before JAX is imported). Bytes per emit are then what the one gather per emitted
step moves from the mesh to the host.

Prints a table; the last line is one JSON object (ratio_on_off, bytes_per_emit, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fake_devices_for(argv) -> None:
    """Split the CPU into as many fake devices as `--mesh` names (replacing a count XLA_FLAGS
    already sets); must run before JAX is imported. A GPU or TPU uses its real devices."""
    import re

    from vlmrl.core.cli import mesh_axes

    spec = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--mesh"), None)
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--mesh=")), spec)
    try:
        sizes = mesh_axes(spec)
    except Exception:  # a bad spec: argparse below reports it
        return
    if not sizes:
        return
    n = 1
    for size in sizes.values():
        n *= size
    flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


if __name__ == "__main__":
    _fake_devices_for(sys.argv[1:])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from vlmrl.core import mesh as meshlib  # noqa: E402
from vlmrl.core.sampling import Sampler, SamplingConfig  # noqa: E402
from vlmrl.errors import UsageError  # noqa: E402
from vlmrl.instrument.bus import Bus  # noqa: E402
from vlmrl.instrument.taps import TapConfig  # noqa: E402
from vlmrl.models.qwen3vl import Qwen3VL, Qwen3VLConfig  # noqa: E402


class Dashboard(threading.Thread):
    """Stands in for LiveTUI's render thread: drain, reduce into the store, render a frame to
    a canvas (no terminal) at 20 FPS. Falls back to a plain numpy reducer if the TUI is absent."""

    def __init__(self, bus: Bus, fps: float = 20.0):
        super().__init__(daemon=True)
        self.sub = bus.subscribe("dashboard")
        self.period = 1.0 / fps
        self.stop_flag = threading.Event()
        self.frames = self.events = 0
        self.busy_s = 0.0
        self.kind = "store+render"
        try:
            from vlmrl.utils.tui import layout, render_cache, store, view
            self._store = store.Store()
            self._view = view.ViewState()
            cache = render_cache.RenderCache()  # carried between frames, as LiveTUI does
            self._render = lambda st, now: layout.render_screen(st, self._view, 160, 48, now, cache=cache)
            self._render(self._store.snapshot(), time.monotonic())
        except Exception as exc:  # the TUI is optional for this measurement
            self.kind = f"numpy reducer ({type(exc).__name__})"
            self._store = None
            self._latest: dict = {}

    def run(self):
        while not self.stop_flag.is_set():
            t0 = time.perf_counter()
            events = self.sub.drain()
            self.events += len(events)
            if self._store is not None:
                for ev in events:
                    self._store.apply(ev)
                self._render(self._store.snapshot(), time.monotonic())
            else:
                for ev in events:
                    pat = getattr(ev, "attention_pattern", None)
                    if pat is not None:
                        self._latest[(ev.step, ev.seq_index)] = np.clip(pat * 4, 0, 3).astype(np.int8)
            self.frames += 1
            spent = time.perf_counter() - t0
            self.busy_s += spent
            self.stop_flag.wait(max(0.0, self.period - spent))

    def stop(self):
        self.stop_flag.set()
        self.join(timeout=5)


def build_model(preset: str, dtype: str):
    cfg = Qwen3VLConfig.preset(preset)
    return Qwen3VL(cfg, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))


def tokens_per_s(sampler: Sampler, prompts, n: int):
    """(wall tokens/s, tokens per process-CPU second) of one generate call."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = sampler.generate(prompts=prompts, max_new_tokens=n)
    tok = float(out.lengths.sum())
    return tok / (time.perf_counter() - t0), tok / max(1e-9, time.process_time() - c0)


def bytes_per_emit(model, context: int, batch: int, mesh=None, state=None) -> int:
    """Device-to-host bytes of one emitted decode step with a cache of `context` slots."""
    cfg = SamplingConfig(stop_ids=(), prompt_buckets=(64,), new_token_buckets=(context - 64,))
    s = Sampler(model, cfg, tap=TapConfig(enabled=True), bus=Bus(), mesh=mesh)
    if state is not None:
        s.update_params(state)
    s.host.stride = 1
    s.generate(prompts=[np.arange(2, 50)] * batch, max_new_tokens=4)
    return int(s.host.last_bytes)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", help="tiny | 2b | 4b | 8b (random weights)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=None, help="prompts per call (default 1, or the data size)")
    ap.add_argument("--mesh", default=None, help="device mesh data=D,fsdp=F,tensor=T (default: one device)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--reps", type=int, default=16, help="interleaved off/on pairs")
    ap.add_argument("--emit-rate", type=float, default=30.0)
    ap.add_argument("--contexts", default="256,8192", help="cache sizes for the bytes-per-emit column")
    args = ap.parse_args(argv)
    try:
        contexts = [int(c) for c in args.contexts.split(",") if c]
    except ValueError:
        ap.error(f"--contexts: expected comma-separated integers, got {args.contexts!r}")
    if not contexts or min(contexts) <= 64:
        ap.error(f"--contexts: each cache size must exceed the 64-token prompt bucket, got {args.contexts!r}")

    mesh = state = None
    if args.mesh:
        try:
            mesh = meshlib.make_mesh(meshlib.parse_mesh(args.mesh, jax.device_count()))
        except UsageError as exc:
            ap.error(str(exc))
    data = 1 if mesh is None else mesh.shape["data"]
    args.batch = data if args.batch is None else args.batch
    if args.batch < 1 or args.batch % data:
        ap.error(f"--batch {args.batch} must be a positive multiple of the mesh's data size {data}")

    t_start = time.perf_counter()
    model = build_model(args.preset, args.dtype)
    if mesh is not None:  # the weights sharded by the mesh rules, as a trainer places them
        state = nnx.state(model)
        state = meshlib.put(state, meshlib.param_shardings(state, mesh))
    prompts = [np.random.default_rng(i).integers(2, 100_000, args.prompt_len) for i in range(args.batch)]
    scfg = SamplingConfig(stop_ids=(), emit_rate=args.emit_rate)
    bus = Bus()
    off = Sampler(model, scfg, mesh=mesh)
    on = Sampler(model, scfg, tap=TapConfig(enabled=True), bus=bus, detok=lambda i: f"tok{i}", mesh=mesh)
    if state is not None:
        off.update_params(state)
        on.update_params(state)
    dash = Dashboard(bus)
    dash.start()
    # compile both, then let the stride settle on the target rate
    for s in (off, on, on, on):
        tokens_per_s(s, prompts, args.new_tokens)
    cb0, emits_wall = on.host.decode_callbacks, 0.0
    tps_off, tps_on, ratios, cpu_ratios = [], [], [], []
    for rep in range(args.reps):
        order = (off, on) if rep % 2 == 0 else (on, off)
        res = {}
        for s in order:
            t0 = time.perf_counter()
            res[s is on] = tokens_per_s(s, prompts, args.new_tokens)
            if s is on:
                emits_wall += time.perf_counter() - t0
        tps_off.append(res[False][0])
        tps_on.append(res[True][0])
        ratios.append(res[True][0] / res[False][0])
        cpu_ratios.append(res[True][1] / res[False][1])
    emits = on.host.decode_callbacks - cb0
    dash.stop()
    dropped = dash.sub.total_dropped
    bpe = {str(c): bytes_per_emit(model, c, args.batch, mesh, state) for c in contexts}

    ratio = statistics.median(ratios)
    result = dict(
        ratio_on_off=round(ratio, 4), bytes_per_emit=bpe, bytes_per_emit_max=max(bpe.values()),
        ratio_on_off_best=round(max(tps_on) / max(tps_off), 4),
        tokens_per_s_off=round(statistics.median(tps_off), 2), tokens_per_s_on=round(statistics.median(tps_on), 2),
        ratio_on_off_cpu=round(statistics.median(cpu_ratios), 4), ratio_min=round(min(ratios), 4),
        ratio_max=round(max(ratios), 4), emits_per_s=round(emits / emits_wall, 1),
        stride=on.host.stride, callback_errors=on.host.errors, bus_dropped=dropped, consumer=dash.kind,
        consumer_busy_frac=round(dash.busy_s / max(1e-9, time.perf_counter() - t_start), 3),
        preset=args.preset, dtype=args.dtype, batch=args.batch, new_tokens=args.new_tokens, reps=args.reps,
        device=str(jax.devices()[0].device_kind), wall_s=round(time.perf_counter() - t_start, 1),
        devices=jax.device_count(), mesh=None if mesh is None else meshlib.describe(meshlib.mesh_shape(mesh)),
        emit_callbacks=emits,
    )
    print(f"tap overhead, preset {args.preset} {args.dtype}, batch {args.batch}, {args.new_tokens} new tokens, "
          f"{args.reps} interleaved pairs, consumer: {dash.kind}, device {result['device']} x {result['devices']}"
          + ("" if mesh is None else f", mesh {result['mesh']} (bytes per emit: one gather to the host)"))
    print(f"{'rep':>4} {'off tok/s':>10} {'on tok/s':>10} {'on/off':>7} {'cpu-time on/off':>16}")
    for i, (a, b, r, c) in enumerate(zip(tps_off, tps_on, ratios, cpu_ratios)):
        print(f"{i:>4} {a:>10.1f} {b:>10.1f} {r:>7.3f} {c:>16.3f}")
    print(f"{'med':>4} {result['tokens_per_s_off']:>10.1f} {result['tokens_per_s_on']:>10.1f} {ratio:>7.3f}"
          f" {result['ratio_on_off_cpu']:>16.3f}   (goal >= 0.95 CPU, 0.98 GPU)")
    print(f"{'best':>4} {max(tps_off):>10.1f} {max(tps_on):>10.1f} {result['ratio_on_off_best']:>7.3f}"
          f"   (fastest run of each)")
    print(f"emits/s {result['emits_per_s']} (target {args.emit_rate}), stride {on.host.stride}, "
          f"bus drops {dropped}, callback errors {on.host.errors}")
    print(f"{'context':>8} {'bytes/emit':>11}")
    for c, b in bpe.items():
        print(f"{c:>8} {b:>11}   (goal <= 65536)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
