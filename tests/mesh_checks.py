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


def placement() -> dict:
    """Where a tiny trainer's arrays live on a data=2,fsdp=2 mesh (no step is run)."""
    from vlmrl.core.cli import parse_args
    from vlmrl.core.trainer import Trainer

    t = Trainer(parse_args(["--batch", "2", "--group", "4", "--mesh", "data=2,fsdp=2", "--steps", "1"]))
    flat = jax.tree_util.tree_flatten_with_path(t.params)[0]
    params = {jax.tree_util.keystr(p): [str(x.sharding.spec), list(x.shape),
                                        list(x.addressable_shards[0].data.shape)] for p, x in flat}
    opt = [str(x.sharding.spec) for x in jax.tree_util.tree_leaves(t.opt_state)]
    return {"devices": jax.device_count(), "mesh": list(t.mesh.devices.shape), "params": params, "opt": opt}


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


def main() -> None:
    name, args = sys.argv[1], sys.argv[2:]
    out = {"placement": placement, "train": train}[name](*args)
    print(json.dumps(out, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else float(o)))


if __name__ == "__main__":
    main()
