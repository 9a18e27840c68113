"""The plan: every memory figure of one RL run, per device, and whether it fits.

Resident for the whole run: policy weights, the frozen reference, Adam's two moments.
On top of them the largest of three phases: the rollout (KV cache + prefill), scoring
(old and reference log-probs) and the update (gradients, saved activations, the
optimizer step). Parameters, gradients and optimizer state are split over fsdp x tensor;
rows over data x fsdp; heads over tensor.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

from vlmrl.plan.activations import activation_bytes, phases
from vlmrl.plan.counts import dtype_bytes, param_counts
from vlmrl.plan.devices import Device
from vlmrl.plan.kv import PAGE_TOKENS, kv_figures
from vlmrl.plan.spec import Mesh, PlanError, RunSpec

# optax's Adam keeps an int32 step count beside mu and nu, and the learning-rate schedule
# (scale_by_schedule) another; clipping and decoupled weight decay keep no state.
OPTIMIZER_COUNTER_BYTES = 2 * 4
DEFAULT_USABLE = 0.90  # share of device memory a run may fill (runtime, fragmentation, workspace)
MAX_FSDP_SEARCH = 4096


def resident_bytes(spec: RunSpec) -> Dict[str, int]:
    n = param_counts(spec.config)["total"]
    w = n * dtype_bytes(spec.dtype)
    return {"weights_bytes": w, "reference_bytes": w if spec.ref else 0,
            "optimizer_bytes": 2 * n * dtype_bytes(spec.optimizer_dtype) + OPTIMIZER_COUNTER_BYTES,
            "grads_bytes": w}


def per_device(spec: RunSpec, mesh: Mesh) -> Dict[str, float]:
    """Per-device bytes of the resident state and of each phase; 'peak' is the total."""
    res = resident_bytes(spec)
    kv = kv_figures(spec)["kv_bytes"]
    ph = phases(spec, mesh)
    resident = (res["weights_bytes"] + res["reference_bytes"] + res["optimizer_bytes"]) / mesh.param_shards
    rollout = kv / (mesh.batch_shards * mesh.tensor) + _total(ph["rollout"])
    score = _total(ph["score"])
    # gradients, then the optimizer's update tree (one params-sized tree) at the step
    update = (res["grads_bytes"] + res["weights_bytes"]) / mesh.param_shards + _total(ph["update"])
    return {"resident": resident, "rollout": rollout, "score": score, "update": update,
            "peak": resident + max(rollout, score, update)}


def _total(phase: Dict[str, float]) -> float:
    return sum(v for k, v in phase.items() if k != "scores")


def _fits(spec: RunSpec, mesh: Mesh, usable: float) -> bool:
    return per_device(spec, mesh)["peak"] <= usable


def smallest_mesh(spec: RunSpec, usable: float) -> Optional[Mesh]:
    """The fewest devices that fit: the given tensor size, fsdp grown over the divisors of
    the minibatch rows (fsdp splits the parameters and the rows; data splits only rows)."""
    t = spec.mesh.tensor
    for f in range(1, min(spec.mb_rows, MAX_FSDP_SEARCH) + 1):
        if spec.mb_rows % f:
            continue
        mesh = Mesh(1, f, t)
        if _fits(spec, mesh, usable):
            return mesh
    return None


def suggestions(spec: RunSpec, usable: float) -> List[dict]:
    """Changes that lower the per-device peak, each with the peak it gives and whether it fits."""
    out = []

    def add(change: str, **kw):
        try:
            other = spec.replace(**kw)
        except PlanError:
            return
        peak = per_device(other, other.mesh)["peak"]
        out.append({"change": change, "per_device_bytes": int(peak), "fits": peak <= usable})

    if spec.group >= 4:
        add(f"--group {spec.group // 2}", group=spec.group // 2)
    if not spec.remat:
        add("--remat", remat=True)
    if spec.optimizer_dtype == "float32":
        add("--optimizer_dtype bfloat16", optimizer_dtype="bfloat16")
    if spec.mb_rows % 2 == 0 and spec.mb_rows > spec.mesh.batch_shards:
        add(f"--minibatches {spec.minibatches * 2}", minibatches=spec.minibatches * 2)
    mesh = smallest_mesh(spec, usable)
    if mesh is not None and mesh != spec.mesh:
        add(f"--mesh {mesh} ({mesh.devices} devices)", mesh=mesh)
    if not spec.remat:  # remat and as much fsdp as it then needs
        remat = spec.replace(remat=True)
        mesh = smallest_mesh(remat, usable)
        if mesh is not None and mesh != spec.mesh:
            add(f"--remat --mesh {mesh} ({mesh.devices} devices)", remat=True, mesh=mesh)
    if spec.images and spec.vision_attention == "batch":
        add("--vision_attention image (per-image vision attention; the model attends batch-wide)",
            vision_attention="image")
    if spec.ref:
        add("--no-ref (no KL to a frozen reference)", ref=False)
    return out


def make_plan(spec: RunSpec, device: Device, usable_fraction: float = DEFAULT_USABLE) -> dict:
    """Every figure of the plan as one flat dict of plain ints/floats/strings (the --json object)."""
    if not 0 < usable_fraction <= 1:
        raise PlanError(f"--usable must be in (0, 1], got {usable_fraction}")
    counts = param_counts(spec.config)
    res = resident_bytes(spec)
    kv = kv_figures(spec)
    whole = phases(spec, Mesh())
    acts = activation_bytes(spec, Mesh())
    dev = per_device(spec, spec.mesh)
    usable = device.memory_bytes * usable_fraction
    peak_phase = max(("rollout", "score", "update"), key=lambda k: dev[k])
    mesh = smallest_mesh(spec, usable)
    # bandwidth floor of one decode step: every weight and every cached byte read once
    per_step = (res["weights_bytes"] / spec.mesh.param_shards
                + kv["kv_bytes_expected_used"] / (spec.mesh.batch_shards * spec.mesh.tensor))
    h, w = spec.resized_hw
    plan = {
        "model": spec.config.name, "device": device.name, "device_label": device.label,
        "device_memory_bytes": device.memory_bytes, "device_bandwidth_bytes_s": device.bandwidth_bytes_s,
        "usable_bytes": int(usable), "mesh": str(spec.mesh), "devices": spec.mesh.devices,
        "dtype": spec.dtype, "optimizer_dtype": spec.optimizer_dtype, "ref": spec.ref, "remat": spec.remat,
        "vision_attention": spec.vision_attention,
        "batch": spec.batch, "group": spec.group, "rows": spec.rows, "minibatches": spec.minibatches,
        "context": spec.context, "max_new": spec.max_new, "images": spec.images,
        "image_resized": f"{h}x{w}", "patches_per_image": spec.patches_per_image,
        "vision_tokens_per_image": spec.vision_tokens_per_image,
        "prompt_len": spec.prompt_len, "seq_len": spec.seq_len, "lengths": spec.lengths.source,
        "mean_completion": round(spec.lengths.mean(spec.max_new), 2),
        "params_total": counts["total"], "params_text": counts["text"], "params_vision": counts["vision"],
        **res, **kv, "kv_page_tokens": PAGE_TOKENS,
        "activation_bytes": int(acts["remat" if spec.remat else "no_remat"]),
        "activation_bytes_no_remat": int(acts["no_remat"]), "activation_bytes_remat": int(acts["remat"]),
        "attention_scores_bytes_avoided": int(whole[peak_phase]["scores"]),
        "rollout_bytes": int(dev["rollout"]), "score_bytes": int(dev["score"]), "update_bytes": int(dev["update"]),
        "resident_bytes": int(dev["resident"]), "peak_phase": peak_phase,
        "per_device_bytes": int(dev["peak"]), "fits": dev["peak"] <= usable,
        "devices_needed": None if mesh is None else mesh.devices,
        "mesh_needed": None if mesh is None else str(mesh),
        "decode_step_seconds_min": per_step / device.bandwidth_bytes_s,
    }
    plan["suggestions"] = [] if plan["fits"] else suggestions(spec, usable)
    for key, value in plan.items():
        if isinstance(value, float) and key not in ("mean_completion", "decode_step_seconds_min"):
            plan[key] = int(math.ceil(value))
    return plan
