"""Memory plan view (key k): the planner's figures for this run beside what it measures.

The plan (a MemoryPlan event the trainer publishes from `vlmrl.plan`, per device) sits
next to the bytes the run itself reports: the arrays it holds (policy, reference, Adam
state), the KV cache its sampler allocated and fills (from the decode events), and the
device memory in use (from RunInfo, where the backend reports it). A figure the run did
not report is `n/a`; nothing on this screen is made up.
"""
from __future__ import annotations

import math

from vlmrl.utils.tui.canvas import Canvas, truncate
from vlmrl.utils.tui.panels.common import NA, fmt_bytes, message, put, title_rule
from vlmrl.utils.tui.render_cache import RenderCache

TITLE = "MEMORY PLAN"
PAGE_TOKENS = 16
LABEL_W, NUM_W = 30, 12


def cache_key(state, view, now):
    b = view.batch_index % state.batch_size()
    return (state.run_v, state.row_version(b), b)


def _measured_kv(state, batch_index: int):
    """(allocated, in use, used pages' bytes, cache_len, cache_max) from the newest decode
    event: the sampler's bytes per slot (all rows) times its slots; None where unknown."""
    d = state.decode_for(batch_index)
    if d is None or not d.kv_bytes or not d.cache_len:
        return None
    per_slot = int(d.kv_bytes) // int(d.cache_len)
    used = int(d.kv_bytes)
    alloc = per_slot * int(d.cache_max) if d.cache_max else None
    pages = math.ceil(int(d.cache_len) / PAGE_TOKENS) * PAGE_TOKENS * per_slot
    return alloc, used, pages, int(d.cache_len), int(d.cache_max or 0)


def _rows(state, plan, batch_index: int):
    """(what, planned bytes, run's bytes or None, note) per line of the table."""
    kv = _measured_kv(state, batch_index)
    run = state.run
    held = [plan.held_weights_bytes, plan.held_reference_bytes, plan.held_optimizer_bytes]
    resident_held = sum(held) if None not in held else None
    device = None
    if run is not None and run.device_memory_in_use is not None:
        device = int(run.device_memory_in_use)
    # "host": the backend reports no device memory (a CPU run), so the run's figure is the
    # process's resident memory, which also holds Python, the runtime and compiled code
    source = getattr(run, "memory_source", "device") if run is not None else "device"
    where = (f"host RSS ({run.device_kind})" if source == "host" else f"device in use ({run.device_kind})"
             ) if device is not None else "device memory not reported"
    slots = f"slots {kv[3]}/{kv[4]}" if kv is not None else "no decode step yet"
    return [
        ("policy weights", plan.weights_bytes, plan.held_weights_bytes, f"{plan.dtype} arrays held"),
        ("reference policy", plan.reference_bytes, plan.held_reference_bytes, "frozen copy"),
        ("optimizer (Adam mu, nu)", plan.optimizer_bytes, plan.held_optimizer_bytes, f"{plan.optimizer_dtype}"),
        ("KV cache, contiguous", plan.kv_bytes, kv[0] if kv else None, f"allocated by the sampler; {slots}"),
        ("KV in 16-token pages", plan.kv_bytes_paged, kv[2] if kv else None,
         f"in use {fmt_bytes(kv[1])}" if kv else "pages the filled slots need"),
        ("gradients (update)", plan.grads_bytes, None, "not reported by the run"),
        ("activations (update)", plan.activation_bytes, None,
         f"of which attention scores {fmt_bytes(plan.attention_scores_bytes)}"),
        ("phase: rollout", plan.rollout_bytes, None, "KV + prefill, on top of resident"),
        ("phase: scoring", plan.score_bytes, None, "old + reference log-probs"),
        ("phase: update", plan.update_bytes, None, "grads + activations + optimizer step"),
        ("resident (weights, ref, Adam)", plan.resident_bytes, resident_held, "sum of the arrays held"),
        ("PEAK per device", plan.per_device_bytes, device,
         where + (f" of {fmt_bytes(run.device_memory_limit)}" if run is not None and run.device_memory_limit else "")),
    ]


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    c = Canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    plan = getattr(state, "plan", None)
    right = "k/Esc: back"
    if plan is None:
        title_rule(cache, c, 0, TITLE, theme, right=right)
        message(c, 2, "no memory plan yet: a training run publishes one when it starts (python -m vlmrl.core.train)",
                theme)
        return c
    title_rule(cache, c, 0, f"{TITLE} · {plan.model_name} · {plan.dtype} · {plan.mesh}", theme, right=right)
    b = view.batch_index % state.batch_size()
    put(c, 1, 1, truncate(f"planned per device (python -m vlmrl.plan) for {plan.rows} rows x {plan.cache_slots} "
                          f"cache slots; peak in the {plan.peak_phase} phase", max(width - 2, 0)), theme.label)
    note_x = LABEL_W + 2 * NUM_W + 3
    y = 3
    if y < height:
        put(c, 1, y, "what".ljust(LABEL_W)[:LABEL_W], theme.label)
        put(c, LABEL_W + 1, y, "plan".rjust(NUM_W), theme.label)
        put(c, LABEL_W + NUM_W + 1, y, "run".rjust(NUM_W), theme.label)
        if note_x < width:
            put(c, note_x, y, truncate("where the run's figure comes from", width - note_x), theme.label)
    for what, planned, measured, note in _rows(state, plan, b):
        y += 1
        if y >= height:
            break
        strong = what.startswith("PEAK")
        put(c, 1, y, truncate(what, LABEL_W), theme.value if strong else theme.plain)
        put(c, LABEL_W + 1, y, fmt_bytes(planned).rjust(NUM_W), theme.value)
        put(c, LABEL_W + NUM_W + 1, y, (fmt_bytes(measured) if measured is not None else NA).rjust(NUM_W),
            theme.good if measured is not None else theme.na)
        if note_x < width:
            put(c, note_x, y, truncate(note, width - note_x), theme.dim)
    return c
