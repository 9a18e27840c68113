"""Running sums over a group of events (the whole log, one bin of updates, or the events
still waiting for their update): fixed size whatever the number of events, mergeable, and
turned into means only at the end.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from vlmrl.analyze import rowstats
from vlmrl.instrument.events import ATTN_STATS, GROUP_METRICS, AttentionMatrix, DecodeState

PHASES = ("prefill", "decode")
TYPES = ("vision", "text", "special")
TRAINING_FIELDS = ("reward_mean", "reward_std", "kl", "loss", "policy_entropy", "clip_fraction",
                   "grad_norm", "learning_rate", "tokens_per_sec")


@dataclasses.dataclass
class Summary:
    """count, mean, spread (Welford's running M2, merged by Chan's rule), min and max of scalars.

    The running M2 keeps the standard deviation exact where sum-of-squares would cancel
    (next-token entropies of a confident policy differ in the sixth digit).
    """

    n: int = 0
    mu: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mu
        self.mu += d / self.n
        self.m2 += d * (x - self.mu)
        self.lo = min(self.lo, x)
        self.hi = max(self.hi, x)

    def merge(self, o: "Summary") -> None:
        if not o.n:
            return
        n = self.n + o.n
        d = o.mu - self.mu
        self.mu += d * o.n / n
        self.m2 += o.m2 + d * d * self.n * o.n / n
        self.n = n
        self.lo = min(self.lo, o.lo)
        self.hi = max(self.hi, o.hi)

    @classmethod
    def of(cls, xs: np.ndarray) -> "Summary":
        """The summary of an array of finite values, in one numpy pass (for merging)."""
        xs = np.asarray(xs, dtype=np.float64).ravel()
        if not xs.size:
            return cls()
        mu = float(xs.mean())
        return cls(n=int(xs.size), mu=mu, m2=float(((xs - mu) ** 2).sum()), lo=float(xs.min()), hi=float(xs.max()))

    @property
    def mean(self) -> Optional[float]:
        return self.mu if self.n else None

    def to_json(self) -> dict:
        if not self.n:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        return {"count": self.n, "mean": self.mu, "std": math.sqrt(max(self.m2, 0.0) / self.n),
                "min": self.lo, "max": self.hi}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class Acc:
    """Sums of everything the report averages, for one group of events."""

    def __init__(self, by_phase: bool = True):
        self.by_phase = by_phase
        self.head_sum: dict = {}  # (phase or "all", stat) -> float64 [L, H]
        self.head_n: dict = {}  # (phase or "all", stat) -> events
        self.head_events = 0  # events that carried at least one statistic
        self.rows = {ph: {k: Summary() for k in rowstats.ROW_STATS} for ph in PHASES}
        self.infl = {"decode": {k: Summary() for k in ("image", "prompt_text", "generated")},
                     "prefill": {k: Summary() for k in ("image", "text")}}
        self.mat = {k: 0.0 for k in rowstats.ROW_STATS}
        self.mat_rows = 0
        self.mat_share = {t: Summary() for t in TYPES}
        self.mat_per_token = {t: Summary() for t in TYPES}
        self.telemetry = {ph: {k: Summary() for k in ("entropy", "logprob")} for ph in PHASES}
        self.credit = Summary()
        self.credit_abs = Summary()
        self.credit_signs = [0, 0]  # positive, negative
        self.training = {k: Summary() for k in TRAINING_FIELDS}
        self.per_token = {k: Summary() for k in GROUP_METRICS}
        self.group_events = 0
        self.updates = Summary()  # update numbers seen (min / max / count)

    # ---- adding events -------------------------------------------------------------------------
    def add_head_stats(self, phase: str, stat: str, arr_lh: np.ndarray) -> None:
        keys = [("all", stat)] + ([(phase, stat)] if self.by_phase else [])
        for key in keys:
            if key in self.head_sum:
                self.head_sum[key] += arr_lh
            else:
                self.head_sum[key] = arr_lh.astype(np.float64)
            self.head_n[key] = self.head_n.get(key, 0) + 1

    def add_row(self, phase: str, stats: dict, influence: dict) -> None:
        for k in rowstats.ROW_STATS:
            self.rows[phase][k].add(stats[k])
        for k, v in influence.items():
            self.infl[phase][k].add(v)

    def add_decode_telemetry(self, ev: DecodeState) -> None:
        for name, value in (("entropy", ev.entropy), ("logprob", ev.logprob)):
            if _finite(value):
                self.telemetry[ev.phase][name].add(float(value))

    def add_matrix(self, sums: dict, rows: int, shares: dict, counts: dict) -> None:
        for k in rowstats.ROW_STATS:
            self.mat[k] += sums[k]
        self.mat_rows += rows
        for t in TYPES:
            self.mat_share[t].add(shares[t])
            if counts[t]:
                self.mat_per_token[t].add(shares[t] / counts[t])

    def add_credits(self, credits: list) -> None:
        for c in credits:
            if _finite(c):
                self.credit.add(float(c))
                self.credit_abs.add(abs(float(c)))
                self.credit_signs[0] += c > 0
                self.credit_signs[1] += c < 0

    def add_training(self, ev) -> None:
        for k in TRAINING_FIELDS:
            v = getattr(ev, k, None)
            if _finite(v):
                self.training[k].add(float(v))

    def add_group(self, cells: dict) -> None:
        self.group_events += 1
        for name, values in cells.items():
            self.per_token[name].merge(Summary.of(values))

    def merge(self, o: "Acc") -> None:
        self.head_events += o.head_events
        for key, arr in o.head_sum.items():
            if key[0] != "all" and not self.by_phase:
                continue
            if key in self.head_sum:
                self.head_sum[key] += arr
            else:
                self.head_sum[key] = arr.copy()
            self.head_n[key] = self.head_n.get(key, 0) + o.head_n[key]
        for ph in PHASES:
            for k in rowstats.ROW_STATS:
                self.rows[ph][k].merge(o.rows[ph][k])
            for k in self.infl[ph]:
                self.infl[ph][k].merge(o.infl[ph][k])
            for k in self.telemetry[ph]:
                self.telemetry[ph][k].merge(o.telemetry[ph][k])
        for k in rowstats.ROW_STATS:
            self.mat[k] += o.mat[k]
        self.mat_rows += o.mat_rows
        for t in TYPES:
            self.mat_share[t].merge(o.mat_share[t])
            self.mat_per_token[t].merge(o.mat_per_token[t])
        self.credit.merge(o.credit)
        self.credit_abs.merge(o.credit_abs)
        self.credit_signs = [x + y for x, y in zip(self.credit_signs, o.credit_signs)]
        for k in TRAINING_FIELDS:
            self.training[k].merge(o.training[k])
        for k in GROUP_METRICS:
            self.per_token[k].merge(o.per_token[k])
        self.group_events += o.group_events
        self.updates.merge(o.updates)

    # ---- means -------------------------------------------------------------------------------
    def head_mean(self, stat: str, phase: str = "all") -> Optional[np.ndarray]:
        key = (phase, stat)
        return self.head_sum[key] / self.head_n[key] if key in self.head_sum else None

    def head_stats(self) -> list:
        """Statistic names seen, in the taps' order (ATTN_STATS), unknown ones after, sorted."""
        names = {stat for _, stat in self.head_sum}
        return [n for n in ATTN_STATS if n in names] + sorted(names - set(ATTN_STATS))

    def matrix_means(self) -> Optional[dict]:
        return {k: self.mat[k] / self.mat_rows for k in rowstats.ROW_STATS} if self.mat_rows else None


# ---- turning events into the sums above (validation included) ---------------------------------

# Attention weights are at most 1; float16 transport may round a weight of 1 up by a few ulps.
_MAX_WEIGHT = 1.01


def head_arrays(ev: DecodeState, shape: tuple) -> dict:
    """{stat: float64 [L, H]} of the event's statistics that have the run's shape and lie in [0, 1]."""
    out = {}
    for name, arr in (ev.attn_stats or {}).items():
        if (isinstance(arr, np.ndarray) and arr.shape == shape and arr.dtype.kind == "f"
                and np.isfinite(arr).all() and (arr >= 0).all() and (arr <= 1).all()):
            out[name] = arr.astype(np.float64)
    return out


def group_cells(ev) -> Optional[dict]:
    """{metric: finite float values} of a rollout-group event's per-token arrays (NaN marks the
    cells past a completion's end); None when no metric array is usable."""
    metrics = getattr(ev, "metrics", None)
    if not isinstance(metrics, dict):
        return None
    out = {}
    for name in GROUP_METRICS:
        arr = metrics.get(name)
        if isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.dtype.kind == "f":
            out[name] = arr[np.isfinite(arr)]
    return out or None


def decode_row(ev: DecodeState, window: int, mass: float) -> Optional[tuple]:
    """(row stats, influence split) of an event's attention_row, or None when it has none usable."""
    row = ev.attention_row
    if not isinstance(row, np.ndarray) or row.ndim != 1 or row.size == 0 or row.dtype.kind != "f":
        return None
    if not np.isfinite(row).all() or (row < 0).any() or (row > _MAX_WEIGHT).any():
        return None
    vision = np.zeros(row.size, dtype=bool)
    span = ev.vision_span
    if span is not None and len(span) == 2 and all(isinstance(x, int) for x in span):
        vision[max(span[0], 0):max(span[1], 0)] = True
    got = rowstats.row_stats(row, vision, window, mass)
    if got is None:
        return None
    stats, start, p = got
    if ev.phase == "decode":
        prompt_end = min(max(ev.cache_len - ev.step, start), row.size) - start
        generated = float(p[prompt_end:].sum())
        infl = {"image": stats["vision"], "prompt_text": float(p[:prompt_end].sum()) - stats["vision"],
                "generated": generated}
    else:
        infl = {"image": stats["vision"], "text": 1.0 - stats["vision"]}
    return stats, infl


def matrix_parts(ev: AttentionMatrix, window: int, mass: float) -> Optional[tuple]:
    """(row-stat sums, rows used, type shares, type counts, influence [K]) of a matrix event."""
    m = ev.matrix
    if not isinstance(m, np.ndarray) or m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        return None
    if m.dtype.kind != "f" or not np.isfinite(m).all() or (m < 0).any() or (m > _MAX_WEIGHT).any():
        return None
    types = ev.token_types
    if not isinstance(types, list) or len(types) != m.shape[1]:
        return None
    types = [t if t in TYPES else "text" for t in types]
    vision = np.array([t == "vision" for t in types], dtype=bool)
    sums, rows, influence = rowstats.matrix_stats(m, vision, window, mass)
    if influence is None:
        return None
    shares, counts = {}, {}
    for t in TYPES:
        sel = np.array([x == t for x in types], dtype=bool)
        shares[t] = float(influence[sel].sum())
        counts[t] = int(sel.sum())
    return sums, rows, shares, counts, influence
