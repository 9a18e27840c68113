"""PPO updates per second with and without the live dashboard (--tui), on the tiny model.

Two trainers are built side by side: "plain" (no taps, no dashboard) and "tui" (sampler
taps on, a LiveTUI drawing on a pseudo-terminal, or in its plain non-TTY mode when no pty
can be opened). After warm-up (compiles), blocks of updates alternate between them so both
see the same machine load; the dashboard runs only during the tui blocks. A third row,
"taps", runs the tui trainer with no dashboard drawing, to split the cost.

The update taps alone: the jitted PPO update of one rollout, compiled twice (update taps
off and on), called alternately on the same batch (each carries its own parameters
forward), median seconds per call of each; `ratio_update_taps` = on / off updates/s. With
them the bytes one update event costs: the device payload, its JSON line in a recording,
and the payload at the Qwen3-VL-2B shape (from the abstract model: nothing allocated).

Prints a table and, as its last line, JSON with `ratio_tui` = tui updates/s / plain
updates/s and `ratio_update_taps`.

  python scripts/bench_train.py [--steps-per-block 5] [--blocks 6] [--update-pairs 30] [--env colors]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _drain(fd: int, stop: threading.Event, counter: list) -> None:
    """Read (and discard) what the dashboard writes to the pty, as a terminal would."""
    import select

    while not stop.is_set():
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                counter[0] += len(os.read(fd, 65536))
            except OSError:
                return


def open_terminal():
    """(out_fd, in_fd, mode, cleanup): a pty sized 160x48 when possible, else /dev/null (non-TTY)."""
    try:
        import fcntl
        import pty
        import struct
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 48, 160, 0, 0))
        stop, counter = threading.Event(), [0]
        reader = threading.Thread(target=_drain, args=(master, stop, counter), daemon=True)
        reader.start()

        def cleanup():
            stop.set()
            reader.join(1.0)
            os.close(slave)
            os.close(master)

        return slave, slave, "pty 160x48", cleanup, counter
    except (ImportError, OSError):
        null = os.open(os.devnull, os.O_RDWR)
        return null, null, "non-tty fallback (plain lines)", lambda: os.close(null), [0]


def update_inputs(tr):
    """(apply_fn, prompt_len, vision inputs of a minibatch, update batch) from one rollout of `tr`."""
    import jax
    import numpy as np

    from vlmrl.core import ppo, rollout

    a = tr.args
    ro = rollout.collect(tr.sampler, tr.env, tr.codec, tr.config, seed=a.seed, step=0, batch=a.batch, group=a.group,
                         max_new_tokens=tr.max_new, temperature=a.temperature, key=jax.random.PRNGKey(7))

    apply_fn = rollout.logits_fn(tr.graphdef)  # as the trainer's

    R = ro.ids.shape[0]
    batch = rollout.to_device({"ids": ro.ids, "attn_mask": ro.attn_mask, "position_ids": ro.position_ids,
                               "pixel_values": ro.pixel_values, "completion_mask": ro.completion_mask})
    score = ppo.make_scorer(apply_fn, ro.prompt_len, rollout.vision_inputs(ro.grid, R, tr.config.vision))
    old, _ = score(tr.params, batch)
    adv = ppo.group_advantages(np.asarray(ro.rewards) + np.random.default_rng(0).normal(0, 0.1, R), a.group)
    batch.update(old_logp=old, ref_logp=old, adv=adv)
    vin = rollout.vision_inputs(ro.grid, R // tr.ppo_cfg.minibatches, tr.config.vision)
    return apply_fn, ro.prompt_len, vin, batch


def bench_update_taps(tr, pairs: int) -> dict:
    """Median seconds per jitted update with the update taps off and on (same batch, alternating)."""
    import jax
    import jax.numpy as jnp

    from vlmrl.core import ppo
    from vlmrl.instrument.record import encode_line

    apply_fn, prompt_len, vin, batch = update_inputs(tr)
    events = tr.bus.subscribe("bench-update-taps", capacity=10_000)
    fns = {k: ppo.make_update(apply_fn, tr.ppo_cfg, tr.optimizer, prompt_len, vin, stats=st)
           for k, st in (("off", None), ("on", tr.update_tap))}
    carry = {k: (jax.tree_util.tree_map(jnp.copy, tr.params), tr.optimizer.init(tr.params)) for k in fns}
    times = {k: [] for k in fns}
    key = jax.random.PRNGKey(0)
    for i in range(pairs + 1):  # the first pair compiles
        for k in (("off", "on") if i % 2 else ("on", "off")):
            t0 = time.perf_counter()
            p, o, m = fns[k](*carry[k], batch, key, jnp.int32(i * tr.ppo_cfg.epochs * tr.ppo_cfg.minibatches))
            jax.block_until_ready(m)
            if i:
                times[k].append(time.perf_counter() - t0)
            carry[k] = (p, o)
    ups = {k: 1.0 / sorted(v)[len(v) // 2] for k, v in times.items()}
    stats = [e for e in events.drain() if e.kind == "update_stats"]
    tr.bus.unsubscribe(events)
    return {"ups": ups, "ratio": ups["on"] / ups["off"], "events": len(stats), "calls": pairs + 1,
            "payload_bytes": tr.update_host.last_bytes, "json_bytes": len(encode_line(stats[-1])) if stats else None,
            "errors": tr.update_host.errors}


def payload_bytes_2b() -> int:
    """Bytes of the update taps' one buffer per update at the Qwen3-VL-2B shape."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vlmrl.core.update_stats import UpdateLayout, row_squares
    from vlmrl.instrument.taps import pack_update
    from vlmrl.models.qwen3vl import Qwen3VL, Qwen3VLConfig

    cfg = Qwen3VLConfig.preset("2b")
    _, params = nnx.split(nnx.eval_shape(lambda: Qwen3VL(cfg, rngs=nnx.Rngs(0))))
    layout = UpdateLayout.build(params, cfg.text, cfg.vision.depth)
    out = jax.eval_shape(lambda p: pack_update(jnp.int32(0), 1, jnp.zeros(3), jnp.stack([row_squares(layout, p)] * 3)),
                         params)
    return int(out.shape[0]) * out.dtype.itemsize


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="colors")
    ap.add_argument("--steps-per-block", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="updates per trainer before timing (compiles)")
    ap.add_argument("--update-pairs", type=int, default=30, help="timed (off, on) pairs of the jitted update")
    a = ap.parse_args(argv)

    from vlmrl.core.cli import parse_args
    from vlmrl.core.trainer import Trainer
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.taps import TapConfig
    from vlmrl.utils.tui_live import LiveTUI

    args = parse_args(["--env", a.env, "--quiet"])
    plain_bus, tui_bus = Bus(), Bus()
    plain = Trainer(args, bus=plain_bus, tap=None)
    tui_tr = Trainer(args, bus=tui_bus, tap=TapConfig(enabled=True))
    tui_tr.groups = True  # as under --tui: each update's GroupState (one more scoring pass)
    out_fd, in_fd, mode, cleanup, written = open_terminal()
    null = open(os.devnull, "w")
    t = tui_tr.config.text
    tui = LiveTUI(num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads, bus=tui_bus,
                  out_fd=out_fd, in_fd=in_fd, plain_stream=null)
    tui_bus.publish(tui_tr.run_info())
    for _ in range(a.warmup):
        plain.train_step()
        tui_tr.train_step()
    times = {"plain": [], "taps": [], "tui": []}
    try:
        for _ in range(a.blocks):
            # "taps": the tui trainer with its sampler taps publishing, but no dashboard drawing
            for name, tr in (("plain", plain), ("taps", tui_tr), ("tui", tui_tr)):
                if name == "tui":
                    tui.start()
                t0 = time.perf_counter()
                for _ in range(a.steps_per_block):
                    tr.train_step()
                times[name].append((time.perf_counter() - t0) / a.steps_per_block)
                if name == "tui":
                    tui.stop()
    finally:
        tui.stop()
        cleanup()
        null.close()
    upd = bench_update_taps(tui_tr, a.update_pairs)
    bytes_2b = payload_bytes_2b()
    # median block: one block disturbed by another process on the shared machine does not decide it
    ups = {k: 1.0 / sorted(v)[len(v) // 2] for k, v in times.items()}
    ratio = ups["tui"] / ups["plain"]
    print(f"{'run':8s} {'updates/s':>10s} {'s/update, each block':>48s}")
    for k in ("plain", "taps", "tui"):
        print(f"{k:8s} {ups[k]:10.3f} {' '.join(f'{x:.3f}' for x in times[k]):>48s}")
    print(f"dashboard: {mode}; frames drawn {tui.frames}; bytes written {written[0]}; "
          f"render cpu {tui.cpu_s:.2f}s; batch {args.batch}x{args.group} rows")
    print(f"jitted update, update taps off {upd['ups']['off']:.3f}/s, on {upd['ups']['on']:.3f}/s, "
          f"ratio {upd['ratio']:.3f} (median of {a.update_pairs} alternating pairs); "
          f"{upd['events']} events for {upd['calls']} tapped updates, {upd['errors']} callback errors")
    print(f"update event: device payload {upd['payload_bytes']} B (tiny), JSON line {upd['json_bytes']} B; "
          f"payload at the 2B shape {bytes_2b} B")
    print(json.dumps({"bench": "train", "env": a.env, "updates_per_s_plain": round(ups["plain"], 4),
                      "updates_per_s_tui": round(ups["tui"], 4),
                      "updates_per_s_taps_only": round(ups["taps"], 4), "ratio_tui": round(ratio, 4), "terminal": mode,
                      "blocks": a.blocks, "steps_per_block": a.steps_per_block, "frames": tui.frames,
                      "ratio_update_taps": round(upd["ratio"], 4),
                      "update_per_s_off": round(upd["ups"]["off"], 4), "update_per_s_on": round(upd["ups"]["on"], 4),
                      "update_pairs": a.update_pairs, "update_events": upd["events"],
                      "update_payload_bytes": upd["payload_bytes"], "update_event_json_bytes": upd["json_bytes"],
                      "update_payload_bytes_2b": bytes_2b}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
