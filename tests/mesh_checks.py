"""Checks that need several devices, run as a child process with fake CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/mesh_checks.py CHECK [ARGS...]

The suite runs on one device (other tests assume it), so test_mesh.py starts this file in a
process of its own and reads the one JSON object it prints last. Not a test module.
"""
from __future__ import annotations

import json
import sys

import jax
import numpy as np


def placement(step: str = "") -> dict:
    """Where a tiny trainer's arrays live on a data=2,fsdp=2 mesh (and, with `step`, after
    one update: the update keeps them there)."""
    from vlmrl.core.cli import parse_args
    from vlmrl.core.trainer import Trainer

    t = Trainer(parse_args(["--batch", "2", "--group", "4", "--mesh", "data=2,fsdp=2", "--steps", "1"]))

    def spec(x) -> str:  # P('fsdp', None) and P('fsdp',) are one placement
        parts = list(x.sharding.spec)
        while parts and parts[-1] is None:
            parts.pop()
        return str(tuple(parts))

    def where():
        flat = jax.tree_util.tree_flatten_with_path(t.params)[0]
        params = {jax.tree_util.keystr(p): [spec(x), list(x.shape), list(x.addressable_shards[0].data.shape)]
                  for p, x in flat}
        return params, [spec(x) for x in jax.tree_util.tree_leaves(t.opt_state)]

    params, opt = where()
    out = {"devices": jax.device_count(), "mesh": list(t.mesh.devices.shape), "params": params, "opt": opt}
    if step:
        t.train_step()
        out["after_step"] = list(where())
    return out


def train(*argv: str) -> dict:
    """A short run of `train` flags: per update its metrics and the rollout's sampled ids
    and rewards (one process, the devices XLA_FLAGS gives it)."""
    from vlmrl.core import rollout
    from vlmrl.core.train import run_training
    from vlmrl.instrument.bus import Bus

    seen = []
    collect = rollout.collect

    def spy(*a, **kw):
        ro = collect(*a, **kw)
        seen.append({"ids": ro.ids[:, ro.prompt_len:].tolist(), "rewards": ro.rewards.tolist()})
        return ro

    rollout.collect = spy
    history = run_training(list(argv) + ["--quiet", "--no_compile_cache"], bus=Bus())
    return {"devices": jax.device_count(), "history": history, "rollouts": seen}


def _tiny_sampler(mesh, tap=None, bus=None):
    """The tiny preset's sampler with random weights, on `mesh` (its weights sharded by the
    mesh rules) or, for mesh None, on one device."""
    from flax import nnx

    from vlmrl.core import mesh as meshlib
    from vlmrl.core.sampling import Sampler, SamplingConfig
    from vlmrl.models.qwen3vl import Qwen3VL, Qwen3VLConfig

    model = Qwen3VL(Qwen3VLConfig.preset("tiny"), rngs=nnx.Rngs(0))
    s = Sampler(model, SamplingConfig(stop_ids=(), initial_stride=1), tap=tap, bus=bus, mesh=mesh,
                detok=lambda i: f"t{i}")
    if mesh is not None:
        state = nnx.state(model)
        s.update_params(meshlib.put(state, meshlib.param_shardings(state, mesh)))
    return s


def _tapped_generate(mesh, kw: dict, kind):
    """The tiny sampler with taps on at stride 1 on `mesh` (None: one device): (sampler,
    its output, the events of type `kind` it published)."""
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.taps import TapConfig

    bus = Bus()
    sub = bus.subscribe("check")
    s = _tiny_sampler(mesh, TapConfig(enabled=True), bus)
    s.host.stride = 1
    gen = s.generate(**kw)
    jax.effects_barrier()
    return s, gen, [e for e in sub.drain() if isinstance(e, kind)]


def taps() -> dict:
    """The sampler's taps on a data=2,fsdp=2 mesh beside the same sampler on one device:
    callbacks per call, events, bytes per emit, and the jaxprs and HLO with taps off."""
    from vlmrl.core import mesh as meshlib
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.events import DecodeState
    from vlmrl.instrument.tap_callback import CALLBACK_PRIMITIVES
    from vlmrl.instrument.taps import TapConfig

    mesh = meshlib.make_mesh((2, 2, 1))
    prompts = [np.arange(2, 20) + 7 * i for i in range(8)]
    kw = dict(prompts=prompts, max_new_tokens=8, temperature=1.0, key=jax.random.PRNGKey(5))
    out = {"devices": jax.device_count()}
    for name, m in (("one", None), ("mesh", mesh)):
        s, gen, events = _tapped_generate(m, kw, DecodeState)
        out[name] = {"callbacks": s.host.callbacks, "decode_callbacks": s.host.decode_callbacks,
                     "bytes": s.host.last_bytes, "tokens": gen.tokens.tolist(),
                     "events": sorted([e.step, e.seq_index, e.token_id, round(float(e.token_prob), 5)]
                                      for e in events)}
    off = _tiny_sampler(mesh, TapConfig(enabled=False))
    plain = _tiny_sampler(mesh)
    on = _tiny_sampler(mesh, TapConfig(enabled=True), Bus())
    jaxprs = {k: s.jaxpr(**kw) for k, s in (("off", off), ("plain", plain), ("on", on))}
    text = {k: s.lowered(**kw).as_text() for k, s in (("off", off), ("on", on))}
    out["jaxpr_off_equals_plain"] = str(jaxprs["off"]) == str(jaxprs["plain"])
    out["jaxpr_callbacks"] = {k: sum(str(jaxprs[k]).count(p) for p in CALLBACK_PRIMITIVES) for k in jaxprs}
    out["jaxpr_off_sharded"] = str(jaxprs["off"]).count("sharding_constraint")
    out["hlo_callbacks"] = {k: t.count("callback") for k, t in text.items()}
    out["update"] = _update_jaxpr(mesh)
    return out


def image_taps() -> dict:
    """The image view's taps on a data=4 mesh beside one device (4 rows, an image in each):
    callbacks per call, the ImageAttention events, and the jaxprs with taps off and on."""
    from conftest import make_prompt

    from vlmrl.core import mesh as meshlib
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.events import ImageAttention
    from vlmrl.instrument.tap_callback import CALLBACK_PRIMITIVES
    from vlmrl.instrument.taps import TapConfig

    mesh = meshlib.make_mesh((4, 1, 1))
    prompts, pixels, grids = [], [], []
    for i in range(4):
        ids, pv, grid = make_prompt(152000, [("text", 3 + i), ("image", (1, 4, 6)), ("text", 4)], seed=i)
        prompts.append(ids), pixels.append(pv), grids.append(grid)
    kw = dict(prompts=prompts, pixel_values=np.concatenate(pixels), image_grid_thw=np.concatenate(grids),
              max_new_tokens=6, temperature=1.0, key=jax.random.PRNGKey(2))
    out = {"devices": jax.device_count()}
    for name, m in (("one", None), ("mesh", mesh)):
        s, gen, events = _tapped_generate(m, kw, ImageAttention)
        out[name] = {"callbacks": s.host.callbacks, "decode_callbacks": s.host.decode_callbacks,
                     "tokens": gen.tokens.tolist(), "steps": [e.step for e in events],
                     "attention": [np.asarray(e.attention, np.float32).tolist() for e in events],
                     "share": [np.asarray(e.image_share, np.float32).tolist() for e in events]}
    jaxprs = {k: str(_tiny_sampler(mesh, tap, Bus() if tap else None).jaxpr(**kw))
              for k, tap in (("off", TapConfig(enabled=False)), ("plain", None), ("on", TapConfig(enabled=True)))}
    out["jaxpr_off_equals_plain"] = jaxprs["off"] == jaxprs["plain"]
    out["jaxpr_callbacks"] = {k: sum(j.count(p) for p in CALLBACK_PRIMITIVES) for k, j in jaxprs.items()}
    return out


def _update_jaxpr(mesh) -> dict:
    """The PPO update without its taps, sharded on `mesh`: host callbacks in its jaxpr and
    its sharding constraints (a toy policy: logits = embedding of the ids through one kernel)."""
    import jax.numpy as jnp

    from vlmrl.core import mesh as meshlib, ppo
    from vlmrl.instrument.tap_callback import CALLBACK_PRIMITIVES

    R, S, N, V, D = 8, 4, 4, 16, 8
    params = {"embed": {"embedding": jnp.ones((V, D)) * 0.01}, "mlp": {"up_proj": {"kernel": jnp.ones((D, V))}}}

    def apply_fn(p, b):
        return p["embed"]["embedding"][b["ids"]] @ p["mlp"]["up_proj"]["kernel"]

    cfg = ppo.PPOConfig(minibatches=2)
    opt = cfg.optimizer()
    state = opt.init(params)
    layout = (mesh, meshlib.param_shardings(params, mesh), meshlib.param_shardings(state, mesh))
    batch = {"ids": jnp.zeros((R, S + N), jnp.int32), "completion_mask": jnp.ones((R, N), bool),
             "old_logp": jnp.zeros((R, N)), "ref_logp": jnp.zeros((R, N)), "adv": jnp.zeros((R,))}
    update = ppo.make_update(apply_fn, cfg, opt, S, layout=layout)
    jaxpr = str(jax.make_jaxpr(update)(params, state, batch, jax.random.PRNGKey(0), jnp.int32(0)))
    return {"callbacks": sum(jaxpr.count(p) for p in CALLBACK_PRIMITIVES),
            "constraints": jaxpr.count("sharding_constraint")}


def main() -> None:
    name, args = sys.argv[1], sys.argv[2:]
    out = {"placement": placement, "train": train, "taps": taps, "image_taps": image_taps}[name](*args)
    print(json.dumps(out, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else float(o)))


if __name__ == "__main__":
    main()
