"""Checks of checkpoints and multi-process runs that need several devices, run as a child
process with fake CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/dist_checks.py CHECK [ARGS...]

The suite runs on one device, so test_dist.py starts this file in a process of its own
and reads the one JSON object it prints last. Not a test module.
"""
from __future__ import annotations

import json
import sys

import jax

SMALL = ["--batch", "4", "--group", "4", "--minibatches", "2", "--seed", "1", "--steps", "4", "--no_compile_cache"]
KEYS = ("loss/total", "policy/kl_ref", "policy/entropy", "optim/grad_norm", "reward/mean")


def _metrics(history) -> list:
    return [{k: float(m[k]) for k in KEYS} for m in history]


def resume_on_other_mesh(directory: str, saved: str, restored: str) -> dict:
    """Train 2 updates on mesh `saved`, checkpoint, train 2 more (the uninterrupted curve);
    then a fresh trainer on mesh `restored` resumes the checkpoint and trains the same 2."""
    from vlmrl.core.cli import parse_args
    from vlmrl.core.trainer import Trainer

    first = Trainer(parse_args([*SMALL, "--mesh", saved, "--ckpt", directory]))
    head = [first.train_step() for _ in range(2)]
    first.save(directory)
    straight = [first.train_step() for _ in range(2)]
    second = Trainer(parse_args([*SMALL, "--mesh", restored, "--ckpt", directory, "--resume"]))
    assert second.restore(directory)
    step = second.step
    leaf = jax.tree_util.tree_leaves(second.params)[1]
    placed = {"mesh": dict(leaf.sharding.mesh.shape), "spec": str(leaf.sharding.spec)}
    again = [second.train_step() for _ in range(2)]
    return {"devices": jax.device_count(), "head": _metrics(head), "straight": _metrics(straight),
            "again": _metrics(again), "resumed_at": step, "placed": placed}


if __name__ == "__main__":
    check, *rest = sys.argv[1:]
    print(json.dumps({"resume_on_other_mesh": resume_on_other_mesh}[check](*rest)))
