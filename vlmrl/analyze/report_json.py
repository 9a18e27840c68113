"""Sums -> the JSON-ready report (every number a mean, share or count of the log's events)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from vlmrl.analyze import rowstats
from vlmrl.analyze.accumulate import PHASES, TRAINING_FIELDS, TYPES, Acc, matrix_parts
from vlmrl.instrument.events import GROUP_METRICS

SCHEMA = "vlmrl-analyze/1"
NOT_RECORDED = {
    "head_entropy_nats": "the taps send focus = 1 - H/log(n) per head, not H or n",
    "head_density": "needs each head's whole row; only the layer x head mean row travels",
    "head_diagonal": "needs each head's whole row; only the layer x head mean row travels",
}


def _run(a, source: dict) -> dict:
    info = a.run_info
    run: dict = {"model": None, "shape": None}
    if info is not None:
        run["model"] = info.model_name
        run["shape"] = {k: getattr(info, k) for k in (
            "num_layers", "num_heads", "num_kv_heads", "head_dim", "dtype", "max_cache", "batch",
            "vision_depth")}
        run["shape"]["deepstack_layers"] = list(info.deepstack_layers)
        run["device"] = {"kind": info.device_kind, "process_count": info.process_count}
    end = a.run_end
    run["end"] = {"reason": end.reason, "step": end.step, "seconds": end.seconds} if end is not None else None
    u = a.total.updates
    run["updates"] = {"count": u.n, "first": int(u.lo) if u.n else None, "last": int(u.hi) if u.n else None}
    run["events"] = dict(sorted(a.counts.items()))
    run["bytes"] = {"file": source["bytes"], "by_kind": dict(sorted(a.bytes.items())),
                    "skipped_lines": source["skipped_bytes"]}
    c = a.coverage
    run["capture"] = {
        "head_stat_events": a.stat_events,
        "attention_row_events": a.row_events,
        "matrix_events": a.matrix_events,
        "rejected": dict(a.rejected),
        "generations": c["generations"],
        "decode_steps_recorded": c["steps_recorded"],
        # recorded steps / steps up to the last recorded one: the emit stride's share of steps
        "step_coverage": c["steps_recorded"] / c["steps_up_to_last"] if c["steps_up_to_last"] else None,
        # events / (batch size x recorded steps): the share of sequences the taps publish
        "row_coverage": c["rows"] / c["row_slots"] if c["row_slots"] else None,
        "unattributed_events": a.unattributed,
    }
    return run


def _layers(total: Acc, shape: Optional[tuple]) -> list:
    names = total.head_stats()
    if not names or shape is None:
        return []
    means = {n: total.head_mean(n) for n in names}
    by_phase = {(ph, n): total.head_mean(n, ph) for ph in PHASES for n in names}
    layers = []
    for li in range(shape[0]):
        heads = []
        for hi in range(shape[1]):
            head = {"head": hi}
            head.update({n: float(means[n][li, hi]) for n in names})
            head["by_phase"] = {ph: {n: (float(by_phase[ph, n][li, hi]) if by_phase[ph, n] is not None else None)
                                     for n in names} for ph in PHASES}
            heads.append(head)
        layers.append({"layer": li, "mean_over_heads": {n: float(means[n][li].mean()) for n in names}, "heads": heads})
    return layers


def _rows(acc: Acc) -> dict:
    return {ph: {"events": acc.rows[ph]["entropy"].n,
                 **{k: acc.rows[ph][k].mean for k in rowstats.ROW_STATS}} for ph in PHASES}


def _matrix(a) -> dict:
    out: dict = {"events": a.matrix_events, "query_rows": a.total.mat_rows, "means": a.total.matrix_means()}
    m = a.last_matrix
    if m is not None:
        out["last"] = {"update": a.last_matrix_update, "layer": m.layer, "head": m.head, "pool": m.pool,
                       "tokens": int(m.matrix.shape[0])}
    return out


# Tokens of the newest matrix listed by influence in the report (the figure draws them too).
TOP_TOKENS = 32


def last_matrix_tokens(a) -> list:
    """[{index, token, type, influence}] of the newest matrix's most influential key tokens."""
    if a.last_matrix is None:
        return []
    infl = matrix_parts(a.last_matrix, a.window, a.mass)[4]
    keys, types = a.last_matrix.key_tokens, a.last_matrix.token_types
    order = np.argsort(-infl, kind="stable")[:TOP_TOKENS]
    return [{"index": int(j), "token": str(keys[j]) if j < len(keys) else "",
             "type": types[j] if types[j] in TYPES else "text", "influence": float(infl[j])} for j in order]


def _influence(a) -> dict:
    t = a.total
    out = {"rows": {ph: {"events": next(iter(t.infl[ph].values())).n,
                         **{k: s.mean for k, s in t.infl[ph].items()}} for ph in PHASES},
           "matrix": {"events": t.mat_share["text"].n,
                      "share": {k: t.mat_share[k].mean for k in TYPES},
                      "per_token": {k: t.mat_per_token[k].mean for k in TYPES},
                      "last_top_tokens": last_matrix_tokens(a)}}
    return out


def _telemetry(t: Acc) -> dict:
    return {
        "next_token": {ph: {k: s.to_json() for k, s in t.telemetry[ph].items()} for ph in PHASES},
        "credit": {**t.credit.to_json(), "abs_mean": t.credit_abs.mean,
                   "positive_share": None, "negative_share": None},
        "training": {k: t.training[k].to_json() for k in TRAINING_FIELDS},
        "per_token": {"group_events": t.group_events, **{k: t.per_token[k].to_json() for k in GROUP_METRICS}},
    }


def _bin_entry(key: int, width: int, acc: Acc, shape: Optional[tuple]) -> dict:
    heads = {}
    for n in acc.head_stats():
        m = acc.head_mean(n)
        heads[n] = {"mean": float(m.mean()), "by_layer": [float(x) for x in m.mean(axis=1)]}
    u = acc.updates
    return {
        "bin": key,
        "updates": [int(u.lo), int(u.hi)] if u.n else [key * width, (key + 1) * width - 1],
        "training_events": u.n,
        "training": {k: acc.training[k].mean for k in TRAINING_FIELDS},
        "head_stat_events": acc.head_events,
        "heads": heads,
        "rows": _rows(acc),
        "influence_decode": {k: s.mean for k, s in acc.infl["decode"].items()},
        "matrix": acc.matrix_means(),
        "next_token_entropy": {ph: acc.telemetry[ph]["entropy"].mean for ph in PHASES},
        "credit": {"count": acc.credit.n, "mean": acc.credit.mean, "abs_mean": acc.credit_abs.mean},
        "per_token": {k: acc.per_token[k].mean for k in GROUP_METRICS},
    }


def _trend(bins: list, pick) -> Optional[dict]:
    pts = [(sum(b["updates"]) / 2.0, pick(b)) for b in bins]
    pts = [(x, y) for x, y in pts if y is not None]
    if not pts:
        return None
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    q = max(1, len(pts) // 4)
    out = {"bins": len(pts), "first_quarter": float(ys[:q].mean()), "last_quarter": float(ys[-q:].mean()),
           "slope_per_update": None}
    if len(set(xs.tolist())) >= 2:
        out["slope_per_update"] = float(np.polyfit(xs, ys, 1)[0])
    return out


def _steps(a) -> dict:
    bins = [_bin_entry(k, a.bin_width, a.bins[k], a.shape) for k in sorted(a.bins)]
    return {
        "bin_width": a.bin_width,
        "bins": bins,
        "image_attention_trend": {
            "heads_vision": _trend(bins, lambda b: b["heads"].get("vision", {}).get("mean")),
            "decode_row_image": _trend(bins, lambda b: b["influence_decode"]["image"]),
            "matrix_vision": _trend(bins, lambda b: (b["matrix"] or {}).get("vision")),
        },
    }


def build(a, source: dict) -> dict:
    """The report of Analysis `a` over the file described by `source`."""
    tele = _telemetry(a.total)
    credit = tele["credit"]
    if a.total.credit.n:
        credit["positive_share"] = a.total.credit_signs[0] / a.total.credit.n
        credit["negative_share"] = a.total.credit_signs[1] / a.total.credit.n
    return {
        "schema": SCHEMA,
        "source": {"path": source["path"], "lines": source["lines"], "events": source["events"],
                   "garbage_lines": source["garbage"], "truncated_lines": source["truncated"],
                   "first_error": source["first_error"],
                   # header lines in the file (--record appends runs); only the last run is analysed
                   "runs": source.get("runs", 1), "run_first_line": source.get("run_first_line", 1)},
        "parameters": {"density_mass": a.mass, "diagonal_window": a.window, "max_bins": a.max_bins},
        "definitions": rowstats.DEFINITIONS,
        "not_recorded": NOT_RECORDED,
        "run": _run(a, source),
        "head_stats": {"names": a.total.head_stats(),
                       "events": {n: a.total.head_n[("all", n)] for n in a.total.head_stats()},
                       "events_by_phase": {ph: {n: a.total.head_n.get((ph, n), 0) for n in a.total.head_stats()}
                                           for ph in PHASES}},
        "layers": _layers(a.total, a.shape),
        "rows": _rows(a.total),
        "matrix": _matrix(a),
        "steps": _steps(a),
        "token_influence": _influence(a),
        "telemetry": tele,
    }
