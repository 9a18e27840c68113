"""Completion length distributions: fixed, uniform, or read from a recorded run's log.

The paged KV figure is an expectation over this distribution (a row holds only the pages
its prompt and completion fill). From a log, each update's rollout-group event gives every
row's completion length; a log without them (older runs) still has each update's
CreditState, the tokens of one real completion (the one the dashboard shows): one draw.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Optional, Tuple

MAX_DISTINCT = 1 << 16  # distinct lengths kept from a log (bounded memory for hostile logs)


class LengthsError(ValueError):
    """A --lengths value that cannot be read; the CLI prints it on one line and exits 2."""


@dataclasses.dataclass(frozen=True)
class Lengths:
    """A discrete distribution of completion lengths: ((length, weight), ...).

    `lengths=None` with kind "fixed" means every sample runs to max_new."""

    kind: str = "fixed"
    weights: Optional[Tuple[Tuple[int, float], ...]] = None
    source: str = "max_new"

    @classmethod
    def fixed_at(cls, n: Optional[int]) -> "Lengths":
        if n is None:
            return cls("fixed", None, "max_new")
        return cls("fixed", ((int(n), 1.0),), f"fixed:{n}")

    @classmethod
    def uniform(cls, lo: int, hi: int) -> "Lengths":
        return cls("uniform", tuple((n, 1.0) for n in range(lo, hi + 1)), f"uniform:{lo}:{hi}")

    @classmethod
    def parse(cls, text: str) -> "Lengths":
        """'fixed', 'fixed:N', 'uniform:A:B', 'log:RUN.jsonl' (or a path to an existing log)."""
        text = str(text).strip()
        kind, _, rest = text.partition(":")
        if kind == "fixed":
            return cls.fixed_at(_int(rest, text, "length")) if rest else cls.fixed_at(None)
        if kind == "uniform":
            lo, sep, hi = rest.partition(":")
            if not sep:
                raise LengthsError(f"--lengths {text!r}: uniform needs uniform:MIN:MAX")
            lo, hi = _int(lo, text, "MIN"), _int(hi, text, "MAX")
            if lo > hi:
                raise LengthsError(f"--lengths {text!r}: MIN {lo} > MAX {hi}")
            return cls.uniform(lo, hi)
        if kind == "log":
            return cls.from_log(rest)
        if os.path.isfile(text):
            return cls.from_log(text)
        raise LengthsError(f"--lengths {text!r}: use fixed, fixed:N, uniform:MIN:MAX or log:RUN.jsonl")

    @classmethod
    def from_log(cls, path: str) -> "Lengths":
        from vlmrl.instrument.log_read import LogFormatError, read_log

        if not os.path.isfile(path):
            raise LengthsError(f"--lengths log:{path}: no such file")
        try:
            _, events, _ = read_log(path)
        except (OSError, LogFormatError, MemoryError) as exc:
            raise LengthsError(f"--lengths log:{path}: {exc}") from None
        counts: Counter = Counter()
        # group events hold every row's length; the credit events only one row per update
        has_groups = any(getattr(ev, "kind", None) == "group" for ev in events)
        for ev in events:
            if has_groups and getattr(ev, "kind", None) == "credit":
                continue
            for n in _completion_lengths(ev):
                if n >= 1 and (n in counts or len(counts) < MAX_DISTINCT):
                    counts[n] += 1
        if not counts:
            raise LengthsError(f"--lengths log:{path}: the log holds no completion lengths (no training updates)")
        total = sum(counts.values())
        return cls("log", tuple((n, c / total) for n, c in sorted(counts.items())),
                   f"log:{os.path.basename(path)} ({total} completions)")

    def support(self, max_new: int) -> Tuple[Tuple[int, float], ...]:
        """((length, probability), ...) with lengths clipped to [1, max_new] (a completion never
        outruns its reservation) and probabilities summing to 1."""
        if self.weights is None:
            return ((max_new, 1.0),)
        merged: Counter = Counter()
        for n, w in self.weights:
            merged[min(max(int(n), 1), max_new)] += float(w)
        total = sum(merged.values())
        return tuple((n, w / total) for n, w in sorted(merged.items()))

    def mean(self, max_new: int) -> float:
        return sum(n * p for n, p in self.support(max_new))


def _int(value: str, text: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise LengthsError(f"--lengths {text!r}: {what} must be an integer, got {value!r}") from None
    if n < 1:
        raise LengthsError(f"--lengths {text!r}: {what} must be >= 1, got {n}")
    return n


def _completion_lengths(ev):
    """Completion lengths an event states exactly (none for most kinds): every row of a
    rollout-group event, or the one completion of a credit event (used when the log has
    no group events, see `from_log`)."""
    kind = getattr(ev, "kind", None)
    if kind == "group":
        lengths = getattr(ev, "lengths", None)
        try:
            return [int(n) for n in list(lengths)[:MAX_DISTINCT]] if lengths is not None else []
        except (TypeError, ValueError):
            return []
    if kind == "credit":
        tokens = getattr(ev, "tokens", None)
        if isinstance(tokens, list) and tokens:
            return [len(tokens)]
    return []
