"""The plan of a running training job, as an event the dashboard's plan view shows.

A run knows its exact shape (rows, cache slots after the sampler's buckets, image size,
dtypes), so its plan uses those instead of the CLI's context + image arithmetic.
"""
from __future__ import annotations

from typing import Optional

from vlmrl.instrument.events import MemoryPlan
from vlmrl.plan.activations import activation_bytes, phases
from vlmrl.plan.kv import kv_figures
from vlmrl.plan.planner import per_device, resident_bytes
from vlmrl.plan.spec import RunSpec


def plan_event(spec: RunSpec, held: Optional[dict] = None) -> MemoryPlan:
    """MemoryPlan for `spec` (figures per device on spec.mesh); `held` gives the bytes of the
    run's own arrays: {"weights": n, "reference": n, "optimizer": n}."""
    held = held or {}
    res = resident_bytes(spec)
    kv = kv_figures(spec)
    dev = per_device(spec, spec.mesh)
    acts = activation_bytes(spec, spec.mesh)
    peak_phase = max(("rollout", "score", "update"), key=lambda k: dev[k])
    p = spec.mesh.param_shards
    rows_split = spec.mesh.batch_shards * spec.mesh.tensor
    return MemoryPlan(
        model_name=spec.config.name, dtype=spec.dtype, optimizer_dtype=spec.optimizer_dtype, mesh=str(spec.mesh),
        rows=spec.rows, cache_slots=spec.seq_len,
        weights_bytes=res["weights_bytes"] // p, reference_bytes=res["reference_bytes"] // p,
        optimizer_bytes=res["optimizer_bytes"] // p, grads_bytes=res["grads_bytes"] // p,
        kv_bytes=kv["kv_bytes"] // rows_split, kv_bytes_paged=kv["kv_bytes_paged"] // rows_split,
        activation_bytes=int(acts["remat" if spec.remat else "no_remat"]),
        attention_scores_bytes=int(phases(spec, spec.mesh)[peak_phase]["scores"]),
        rollout_bytes=int(dev["rollout"]), score_bytes=int(dev["score"]), update_bytes=int(dev["update"]),
        resident_bytes=int(dev["resident"]), per_device_bytes=int(dev["peak"]), peak_phase=peak_phase,
        held_weights_bytes=held.get("weights"), held_reference_bytes=held.get("reference"),
        held_optimizer_bytes=held.get("optimizer"))
