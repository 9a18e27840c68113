"""The analysis of one log: events in (one at a time), the report dict out.

`Analysis.add(event, nbytes)` folds an event into fixed-size sums; `Analysis.report()`
turns them into the JSON-ready report that `report.json` holds and the figures draw.
Memory is bounded: sums over the whole log, at most MAX_BINS bins of updates, a small
window of generations for the capture coverage, and the newest attention matrix.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from vlmrl.analyze import rowstats
from vlmrl.analyze.accumulate import PHASES, Acc, decode_row, group_cells, head_arrays, matrix_parts
from vlmrl.analyze.report_json import build
from vlmrl.instrument.events import AttentionMatrix, CreditState, DecodeState, GroupState, RunEnd, RunInfo, TrainingState

# Updates are grouped into at most this many bins; the bin width doubles when there would be
# more, so a run of any length costs the same memory and the evolution figure stays readable.
MAX_BINS = 256
# Generations whose decode steps are still being counted for the coverage (events of one
# generate() call can arrive out of order, but not far apart).
_OPEN_GENERATIONS = 8


def _kind(ev) -> str:
    if isinstance(ev, DecodeState):
        return f"decode_{ev.phase}" if ev.phase in PHASES else "decode_other"  # a log's phases are not trusted
    return ev.kind


class Analysis:
    """Fixed-size sums over a log's events, added one at a time, and the report built from them."""

    def __init__(self, header: Optional[dict] = None, window: int = rowstats.DIAGONAL_WINDOW,
                 mass: float = rowstats.DENSITY_MASS):
        self.window, self.mass, self.max_bins = window, mass, MAX_BINS
        self.run_info: Optional[RunInfo] = (header or {}).get("run_info")
        self.shape: Optional[tuple] = None
        self.counts: dict = {}
        self.bytes: dict = {}
        self.total = Acc(by_phase=True)
        self.pending = Acc(by_phase=False)  # attention events whose update has not been logged yet
        self.pending_events = 0
        self.unattributed = 0
        self.bins: dict = {}
        self.bin_width = 1
        self.rejected = {"attn_stats": 0, "attention_row": 0, "matrix": 0, "group": 0}
        self.stat_events = self.row_events = self.matrix_events = 0
        self.generations: dict = {}  # generation -> [{recorded step: batch size}, events recorded]
        self.coverage = {"generations": 0, "steps_recorded": 0, "steps_up_to_last": 0, "rows": 0, "row_slots": 0}
        self.run_end: Optional[RunEnd] = None
        self.last_matrix: Optional[AttentionMatrix] = None
        self.last_matrix_update: Optional[int] = None
        self._matrix_waiting = False
        self._handlers = {DecodeState: self._decode, AttentionMatrix: self._matrix, TrainingState: self._training,
                          CreditState: self._credit, GroupState: self._group, RunInfo: self._run_info,
                          RunEnd: self._run_end}

    # ---- events in -----------------------------------------------------------------------------
    def add(self, ev, nbytes: int = 0) -> None:
        kind = _kind(ev)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.bytes[kind] = self.bytes.get(kind, 0) + nbytes
        handler = self._handlers.get(type(ev))
        if handler is not None:  # kinds the report does not read are counted only
            handler(ev)

    def _run_info(self, ev: RunInfo) -> None:
        if self.run_info is None:  # the header's (or the first) describes the run
            self.run_info = ev

    def _run_end(self, ev: RunEnd) -> None:
        self.run_end = ev

    def _credit(self, ev: CreditState) -> None:
        acc = self._bin(ev.step) if isinstance(ev.step, int) and ev.step >= 0 else None
        for a in (self.total, acc):
            if a is not None and isinstance(ev.credits, list):
                a.add_credits(ev.credits)

    def _decode(self, ev: DecodeState) -> None:
        if ev.phase not in PHASES:
            return
        self._count_coverage(ev)
        for acc in (self.total, self.pending):
            acc.add_decode_telemetry(ev)
        attention = False
        if ev.attn_stats:
            if self.shape is None:
                self.shape = self._stat_shape(ev)
            arrays = head_arrays(ev, self.shape) if self.shape else {}
            if arrays:
                self.stat_events += 1
                self.total.head_events += 1
                self.pending.head_events += 1
                attention = True
                for name, arr in arrays.items():
                    self.total.add_head_stats(ev.phase, name, arr)
                    self.pending.add_head_stats(ev.phase, name, arr)
            if len(arrays) < len(ev.attn_stats):
                self.rejected["attn_stats"] += 1
        if ev.attention_row is not None:
            got = decode_row(ev, self.window, self.mass)
            if got is None:
                self.rejected["attention_row"] += 1
            else:
                self.row_events += 1
                attention = True
                for acc in (self.total, self.pending):
                    acc.add_row(ev.phase, *got)
        self.pending_events += attention

    def _stat_shape(self, ev: DecodeState) -> Optional[tuple]:
        info = self.run_info
        if info is not None and isinstance(info.num_layers, int) and isinstance(info.num_heads, int):
            return (info.num_layers, info.num_heads)
        first = next(iter(ev.attn_stats.values()))
        return first.shape if isinstance(first, np.ndarray) and first.ndim == 2 else None

    def _matrix(self, ev: AttentionMatrix) -> None:
        got = matrix_parts(ev, self.window, self.mass)
        if got is None:
            self.rejected["matrix"] += 1
            return
        sums, rows, shares, counts, _ = got
        self.matrix_events += 1
        self.pending_events += 1
        for acc in (self.total, self.pending):
            acc.add_matrix(sums, rows, shares, counts)
        self.last_matrix, self.last_matrix_update, self._matrix_waiting = ev, None, True

    def _group(self, ev: GroupState) -> None:
        cells = group_cells(ev)
        if cells is None:
            self.rejected["group"] += 1
            return
        acc = self._bin(ev.step) if isinstance(ev.step, int) and ev.step >= 0 else None
        for a in (self.total, acc):
            if a is not None:
                a.add_group(cells)

    def _training(self, ev: TrainingState) -> None:
        if not isinstance(ev.step, int) or ev.step < 0:
            return
        self.total.add_training(ev)
        self.total.updates.add(float(ev.step))
        acc = self._bin(ev.step)
        acc.add_training(ev)
        acc.updates.add(float(ev.step))
        acc.merge(self.pending)
        self.pending, self.pending_events = Acc(by_phase=False), 0
        if self._matrix_waiting:
            self.last_matrix_update, self._matrix_waiting = ev.step, False

    def _bin(self, update: int) -> Acc:
        key = update // self.bin_width
        if key not in self.bins:
            self.bins[key] = Acc(by_phase=False)
            while len(self.bins) > self.max_bins:
                self.bin_width *= 2
                merged: dict = {}
                for k in sorted(self.bins):
                    if k // 2 in merged:
                        merged[k // 2].merge(self.bins[k])
                    else:
                        merged[k // 2] = self.bins[k]
                self.bins = merged
            key = update // self.bin_width
        return self.bins[key]

    def _count_coverage(self, ev: DecodeState) -> None:
        if not isinstance(ev.generation, int) or not isinstance(ev.step, int) or ev.step < 0:
            return
        g = self.generations.setdefault(ev.generation, [{}, 0])
        g[0][ev.step] = ev.batch_size if isinstance(ev.batch_size, int) and ev.batch_size > 0 else 1
        g[1] += 1
        while len(self.generations) > _OPEN_GENERATIONS:
            self._close_generation(min(self.generations))

    def _close_generation(self, gen: int) -> None:
        steps, rows = self.generations.pop(gen)
        c = self.coverage
        c["generations"] += 1
        c["steps_recorded"] += len(steps)
        c["steps_up_to_last"] += max(steps) + 1
        c["rows"] += rows  # one event per sequence row and recorded step
        c["row_slots"] += sum(steps.values())  # the batch size at each recorded step

    # ---- report out ----------------------------------------------------------------------------
    def report(self, source: dict) -> dict:
        while self.generations:
            self._close_generation(min(self.generations))
        self.unattributed = self.pending_events
        return build(self, source)
