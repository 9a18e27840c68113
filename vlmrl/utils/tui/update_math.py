"""Reading UpdateStats (the update taps' event): named rows, a log-scale ramp, and which
rows exploded or died between two updates. numpy only; the update view and the plain
log both use it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

# A row whose ||Δw||/||w|| grew this many times since the previous update is "exploding".
JUMP = 10.0
# A row whose ratio is below this fraction of the update's median row ratio (or exactly 0)
# is "dead": its weights no longer move while the rest of the model does.
DEAD_FRACTION = 1e-3
# Levels of the log-scale ramp; the span is at least this many decades, so an update whose
# rows all moved alike is not stretched into four colours by noise.
MIN_DECADES = 1.0


def merger_name(i: int) -> str:
    return "merger" if i == 0 else f"DS{i - 1}"


def named_rows(ev) -> List[Tuple[str, float]]:
    """(name, ratio) of every text layer (L0..), vision block (V0..) and merger (merger, DS0..)."""
    out = []
    for prefix, arr in (("L", ev.layer_ratio), ("V", ev.vision_ratio)):
        if arr is not None:
            out += [(f"{prefix}{i}", float(x)) for i, x in enumerate(np.ravel(arr))]
    if ev.merger_ratio is not None:
        out += [(merger_name(i), float(x)) for i, x in enumerate(np.ravel(ev.merger_ratio))]
    return out


def alerts(prev, cur) -> Tuple[List[Tuple[str, float]], List[str]]:
    """(exploding [(name, factor)], dead [name]) of `cur` against the update before it (`prev`, or None).

    Exploding: ratio >= JUMP x the same row's ratio in `prev`. Dead: ratio 0, or below
    DEAD_FRACTION x the median of `cur`'s rows. NaN rows (no weight) are neither."""
    rows = named_rows(cur)
    finite = [r for _, r in rows if math.isfinite(r)]
    median = float(np.median(finite)) if finite else 0.0
    before = dict(named_rows(prev)) if prev is not None else {}
    exploding, dead = [], []
    for name, r in rows:
        if not math.isfinite(r):
            continue
        if r == 0.0 or r < DEAD_FRACTION * median:
            dead.append(name)
            continue
        b = before.get(name)
        if b is not None and math.isfinite(b) and b > 0 and r >= JUMP * b:
            exploding.append((name, r / b))
    exploding.sort(key=lambda t: -t[1])
    return exploding, dead


def decade_range(values: Sequence[np.ndarray]) -> Optional[Tuple[float, float]]:
    """(lo, hi) in log10 over the finite positive values of the arrays; None when there are none."""
    logs = [np.log10(v[np.isfinite(v) & (v > 0)]) for v in (np.asarray(a, np.float64) for a in values if a is not None)]
    logs = [x for x in logs if x.size]
    if not logs:
        return None
    lo, hi = min(float(x.min()) for x in logs), max(float(x.max()) for x in logs)
    if hi - lo < MIN_DECADES:
        mid = (lo + hi) / 2
        lo, hi = mid - MIN_DECADES / 2, mid + MIN_DECADES / 2
    return lo, hi


ZERO, NAN = 4, 5  # levels beyond the four ramp steps


def log_levels(values, span: Tuple[float, float]) -> np.ndarray:
    """Ramp level per value: 0..3 over log10 in `span` in four equal steps, ZERO for 0,
    NAN for NaN (no weight / not measured)."""
    v = np.asarray(values, np.float64)
    lo, hi = span
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (np.log10(v) - lo) / max(hi - lo, 1e-12)
    frac = np.where(np.isfinite(frac), frac, 0.0)  # 0 and NaN get their own levels below
    lv = np.clip(np.floor(frac * 4), 0, 3).astype(np.int64)
    lv = np.where(v == 0, ZERO, lv)
    return np.where(np.isnan(v), NAN, lv)


def level_edges(span: Tuple[float, float]) -> List[float]:
    """The ratio values where the ramp steps up (three edges between four levels)."""
    lo, hi = span
    return [10 ** (lo + (hi - lo) * k / 4) for k in (1, 2, 3)]


def fmt_ratio(x) -> str:
    """1.2e-3 style; 0 and n/a spelled out."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    if x == 0:
        return "0"
    m, e = f"{float(x):.1e}".split("e")
    return f"{m}e{int(e)}"


_UPDATE_ROWS = ("head", "mlp", "layer", "vision", "merger", "other")


def update_shape(ev: UpdateStats) -> tuple:
    return tuple(None if getattr(ev, f"{r}_ratio") is None else getattr(ev, f"{r}_ratio").shape for r in _UPDATE_ROWS)


def checked_update(ev: UpdateStats) -> UpdateStats:
    """`ev` with float32 arrays of consistent shapes, or ValueError naming what is wrong.

    head_* are [layers, heads]; mlp_* and layer_* [layers]; each *_grad matches its
    *_ratio; ratios and norms are >= 0 or NaN (an untrusted log can say anything)."""
    for name in ("step", "optimizer_steps"):
        value = getattr(ev, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"update_stats {name} must be a non-negative integer, got {value!r}")
    arrays = {}
    for r in _UPDATE_ROWS:
        for kind in ("grad", "ratio"):
            value = getattr(ev, f"{r}_{kind}")
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float32)
            if arr.ndim != (2 if r == "head" else 1):
                raise ValueError(f"update_stats {r}_{kind}: bad shape {arr.shape}")
            if (arr < 0).any() or np.isinf(arr).any():
                raise ValueError(f"update_stats {r}_{kind}: negative or infinite values")
            arrays[f"{r}_{kind}"] = arr
    for r in _UPDATE_ROWS:
        g, q = arrays.get(f"{r}_grad"), arrays.get(f"{r}_ratio")
        if g is not None and q is not None and g.shape != q.shape:
            raise ValueError(f"update_stats {r}: grad {g.shape} vs ratio {q.shape}")
    layers = {a.shape[0] for k, a in arrays.items() if k.split("_")[0] in ("head", "mlp", "layer")}
    if len(layers) > 1:
        raise ValueError(f"update_stats: layer counts disagree {sorted(layers)}")
    for name in ("grad_norm", "grad_norm_max", "clip_factor"):
        float(getattr(ev, name))
    return dataclasses.replace(ev, **arrays) if any(getattr(ev, k) is not a for k, a in arrays.items()) else ev
