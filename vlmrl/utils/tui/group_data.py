"""Checks and orders the rollout-group event (`GroupState`) for the group view.

A GroupState comes from the trainer or from a log written on another machine, so the
store passes it through `check_group` first: every count, shape and type the view relies
on is checked and the event is rejected whole when one is wrong. The view then reads it
through `samples` (one prompt's rows, best first) and `metric_scale`.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import List, NamedTuple, Tuple

import numpy as np

from vlmrl.instrument.events import GROUP_MAX_CELLS, GROUP_MAX_ROWS, GROUP_METRICS, GroupState

# Metrics centred on a value (credit on 0, ratio on 1) are drawn as signed deviations;
# the others as a level between their smallest and largest value in the prompt's group.
CENTRE = MappingProxyType({"credit": 0.0, "ratio": 1.0})


def _strs(value, n: int, name: str) -> None:
    if not isinstance(value, list) or len(value) != n or not all(isinstance(s, str) for s in value):
        raise ValueError(f"group {name} must be a list of {n} strings")


def _floats(value, n: int, name: str) -> None:
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.shape != (n,):
        raise ValueError(f"group {name} must be a float array of shape ({n},), got {getattr(value, 'shape', value)!r}")


def check_group(ev: GroupState) -> None:
    """Raise ValueError naming the first field of `ev` the group view could not show."""
    rows, group = len(ev.texts) if isinstance(ev.texts, list) else -1, ev.group
    if isinstance(ev.step, bool) or not isinstance(ev.step, int) or ev.step < 0:
        raise ValueError(f"group step must be a non-negative integer, got {ev.step!r}")
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"group size must be a positive integer, got {group!r}")
    if not 1 <= rows <= GROUP_MAX_ROWS or rows % group:
        raise ValueError(f"group has {rows} samples: need 1..{GROUP_MAX_ROWS} in whole groups of {group}")
    _strs(ev.texts, rows, "texts")
    _strs(ev.prompts, rows // group, "prompts")
    if ev.answers:
        _strs(ev.answers, rows // group, "answers")
    if not isinstance(ev.tokens, list) or len(ev.tokens) != rows:
        raise ValueError(f"group tokens must be a list of {rows} token lists")
    for toks in ev.tokens:
        if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
            raise ValueError("group tokens must be lists of strings")
    width = max((len(t) for t in ev.tokens), default=0)
    if ev.lengths is not None:
        lengths = ev.lengths
        if not isinstance(lengths, np.ndarray) or lengths.dtype.kind not in "iu" or lengths.shape != (rows,):
            raise ValueError(f"group lengths must be an integer array of shape ({rows},)")
        if (lengths < np.asarray([len(t) for t in ev.tokens])).any():
            raise ValueError("group lengths must count at least the tokens sent")
    _floats(ev.rewards, rows, "rewards")
    _floats(ev.advantages, rows, "advantages")
    if not isinstance(ev.metrics, dict):
        raise ValueError("group metrics must be a dict")
    for name, arr in ev.metrics.items():
        if name not in GROUP_METRICS:
            raise ValueError(f"unknown group metric {name!r}")
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f" or arr.ndim != 2 or arr.shape[0] != rows:
            raise ValueError(f"group metric {name!r} must be a float array [{rows}, tokens]")
        if arr.shape[1] < width or arr.size > GROUP_MAX_CELLS:
            raise ValueError(f"group metric {name!r} has shape {arr.shape}: tokens {width}, "
                             f"at most {GROUP_MAX_CELLS} cells")


class Sample(NamedTuple):
    """One completion of a prompt as the view lists it."""

    row: int  # its row in the event
    reward: float
    advantage: float
    text: str
    tokens: Tuple[str, ...]
    length: int  # tokens in the whole completion (more than `tokens` when it was cut)


def num_prompts(ev: GroupState) -> int:
    return len(ev.texts) // ev.group


def samples(ev: GroupState, prompt: int) -> List[Sample]:
    """Prompt `prompt`'s samples, best first: highest reward, then highest advantage
    (non-finite values last), then sampling order."""
    lo = (prompt % num_prompts(ev)) * ev.group
    out = []
    for r in range(lo, lo + ev.group):
        toks = tuple(ev.tokens[r])
        length = len(toks) if ev.lengths is None else int(ev.lengths[r])
        out.append(Sample(r, float(ev.rewards[r]), float(ev.advantages[r]), ev.texts[r], toks, length))

    def key(s: Sample):
        return tuple(-v if math.isfinite(v) else math.inf for v in (s.reward, s.advantage)) + (s.row,)

    return sorted(out, key=key)


def metric_values(ev: GroupState, metric: str, rows: List[int]) -> np.ndarray:
    """float64 [len(rows), T] of one metric (NaN where not sent)."""
    arr = ev.metrics.get(metric)
    if arr is None:
        return np.full((len(rows), 0), np.nan)
    return np.asarray(arr, np.float64)[rows]


def metric_scale(values: np.ndarray, metric: str) -> Tuple[float, float]:
    """(low, high) the colour levels span: for a centred metric (credit, ratio) the
    largest deviation either side of its centre; else the finite min..max. Non-finite
    values (none sent, or a bad log) never set the scale."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    if metric in CENTRE:
        c = CENTRE[metric]
        dev = float(np.max(np.abs(finite - c)))
        return c - dev, c + dev
    return float(finite.min()), float(finite.max())


def level(value: float, low: float, high: float, metric: str) -> float:
    """Where a value sits in the scale: 0..1 for plain metrics; -1..1 (its signed share of
    the largest deviation) for centred ones; NaN when it has no place."""
    if not (math.isfinite(value) and math.isfinite(low) and math.isfinite(high)):
        return math.nan
    if metric in CENTRE:
        c = CENTRE[metric]
        half = high - c
        return 0.0 if half <= 0 else max(-1.0, min(1.0, (value - c) / half))
    span = high - low
    return 0.5 if span <= 0 else max(0.0, min(1.0, (value - low) / span))
