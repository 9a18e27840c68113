"""An independent numpy computation of every number `python -m vlmrl.analyze` reports.

Written apart from vlmrl/analyze: the whole log is loaded at once with `read_log`, events
are grouped by plain loops, rows are handled one at a time, and means are np.mean over
stacked arrays. Only the definitions (the report's `definitions` text) are shared.
"""
import json

import numpy as np

from vlmrl.instrument.events import (ATTN_STATS, GROUP_METRICS, AttentionMatrix, CreditState, DecodeState, GroupState,
                                    RunEnd, TrainingState)
from vlmrl.instrument.log_read import read_log

PH = ("prefill", "decode")
TY = ("vision", "text", "special")
TF = ("reward_mean", "reward_std", "kl", "loss", "policy_entropy", "clip_fraction", "grad_norm",
      "learning_rate", "tokens_per_sec")
RS = ("entropy", "focus", "density", "diagonal", "sink", "vision")


def mean_or_none(xs):
    return float(np.mean(xs)) if len(xs) else None


def summary(xs):
    xs = np.asarray(xs, dtype=np.float64)
    if not xs.size:
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"count": int(xs.size), "mean": float(xs.mean()), "std": float(xs.std()), "min": float(xs.min()),
            "max": float(xs.max())}


def one_row(p, n, vision, window, mass):
    """Stats of a normalised row p of n real keys (last one = the query)."""
    ent = float(-sum(x * np.log(x) for x in p if x > 0))
    desc = np.sort(p)[::-1]
    k = next(i + 1 for i in range(n) if desc[: i + 1].sum() >= mass * p.sum())
    return {"entropy": ent, "focus": 1.0 - ent / np.log(n) if n > 1 else 1.0, "density": k / n,
            "diagonal": float(p[max(0, n - window):].sum()), "sink": float(p[0]), "vision": float(p[vision].sum())}


def attention_row(ev, window, mass):
    row = ev.attention_row.astype(np.float64)
    first = int(np.argmax(row > 0))
    p = row[first:] / row[first:].sum()
    vis = np.array([ev.vision_span[0] <= first + j < ev.vision_span[1] for j in range(p.size)])
    st = one_row(p, p.size, vis, window, mass)
    if ev.phase == "decode":
        n_prompt = ev.cache_len - ev.step - first
        infl = {"image": st["vision"], "prompt_text": float(p[:n_prompt].sum()) - st["vision"],
                "generated": float(p[n_prompt:].sum())}
    else:
        infl = {"image": st["vision"], "text": 1.0 - st["vision"]}
    return st, infl


def matrix(ev, window, mass):
    m = ev.matrix.astype(np.float64)
    vis = np.array([t == "vision" for t in ev.token_types])
    rows, infl, with_mass = [], np.zeros(m.shape[1]), 0
    for i in range(m.shape[0]):
        seen = m[i, : i + 1]
        if seen.sum() <= 0:
            continue
        p = seen / seen.sum()
        infl[: i + 1] += p
        with_mass += 1
        if i >= 1:
            rows.append(one_row(p, i + 1, vis[: i + 1], window, mass))
    infl /= with_mass
    share = {t: float(sum(infl[j] for j, x in enumerate(ev.token_types) if x == t)) for t in TY}
    count = {t: ev.token_types.count(t) for t in TY}
    return rows, infl, share, count


def oracle(path, window=8, mass=0.9, max_bins=256):
    header, events, rstats = read_log(path)
    raw = open(path, "rb").read()
    kinds_bytes = {}
    for line in raw.split(b"\n")[1:]:
        if line.strip():
            d = json.loads(line)
            k = f"decode_{d['phase']}" if d["kind"] == "decode" else d["kind"]
            kinds_bytes[k] = kinds_bytes.get(k, 0) + len(line) + 1
    info = header["run_info"]
    L, H = info.num_layers, info.num_heads

    # which update each event belongs to: the next training line (credit: its own step)
    upd, waiting = [None] * len(events), []
    for i, ev in enumerate(events):
        if isinstance(ev, TrainingState):
            for j in waiting:
                upd[j] = ev.step
            waiting, upd[i] = [], ev.step
        elif isinstance(ev, (CreditState, GroupState)):
            upd[i] = ev.step
        else:
            waiting.append(i)
    keys = sorted({upd[i] for i, e in enumerate(events) if isinstance(e, (TrainingState, CreditState, GroupState))})
    width = 1
    while len({k // width for k in keys}) > max_bins:
        width *= 2

    dec = [(i, e) for i, e in enumerate(events) if isinstance(e, DecodeState)]
    stat_ev = [(i, e) for i, e in dec if e.attn_stats]
    row_ev = [(i, e, *attention_row(e, window, mass)) for i, e in dec if e.attention_row is not None]
    mats = [(i, e, *matrix(e, window, mass)) for i, e in enumerate(events) if isinstance(e, AttentionMatrix)]
    trains = [e for e in events if isinstance(e, TrainingState)]
    credits = [(i, e) for i, e in enumerate(events) if isinstance(e, CreditState)]
    names = [n for n in ATTN_STATS if any(n in e.attn_stats for _, e in stat_ev)]

    def group(sel):
        """The per-bin / whole-log numbers of the events whose index passes sel."""
        g = {}
        st = [e for i, e in stat_ev if sel(i)]
        g["heads"] = {n: np.stack([e.attn_stats[n].astype(np.float64) for e in st]) for n in names} if st else {}
        g["head_events"] = len(st)
        g["rows"] = {ph: {"events": sum(1 for i, e, *_ in row_ev if sel(i) and e.phase == ph),
                          **{k: mean_or_none([s[k] for i, e, s, _ in row_ev if sel(i) and e.phase == ph]) for k in RS}}
                     for ph in PH}
        g["infl"] = {ph: [inf for i, e, _, inf in row_ev if sel(i) and e.phase == ph] for ph in PH}
        mrows = [r for i, _, rows, *_ in mats if sel(i) for r in rows]
        g["matrix"] = {k: float(np.mean([r[k] for r in mrows])) for k in RS} if mrows else None
        g["mrows"] = len(mrows)
        g["entropy"] = {ph: [e.entropy for i, e in dec if sel(i) and e.phase == ph] for ph in PH}
        g["logprob"] = {ph: [e.logprob for i, e in dec if sel(i) and e.phase == ph] for ph in PH}
        g["credit"] = [c for i, e in credits if sel(i) for c in e.credits]
        g["train"] = [events[i] for i in range(len(events)) if sel(i) and isinstance(events[i], TrainingState)]
        groups = [e for i, e in enumerate(events) if sel(i) and isinstance(e, GroupState)]
        g["groups"] = len(groups)
        g["cells"] = {m: np.concatenate([e.metrics[m].ravel() for e in groups]) if groups else np.zeros(0)
                      for m in GROUP_METRICS}
        g["cells"] = {m: v[~np.isnan(v)].astype(np.float64) for m, v in g["cells"].items()}
        return g

    everything = group(lambda i: True)
    head_mean = {n: a.mean(axis=0) for n, a in everything["heads"].items()}
    by_phase = {}
    for ph in PH:
        for n in names:
            arrs = [e.attn_stats[n] for _, e in stat_ev if e.phase == ph]
            by_phase[ph, n] = np.mean(np.stack(arrs).astype(np.float64), axis=0) if arrs else None
    layers = [{"layer": li, "mean_over_heads": {n: float(head_mean[n][li].mean()) for n in names},
               "heads": [{"head": hi, **{n: float(head_mean[n][li, hi]) for n in names},
                          "by_phase": {ph: {n: None if by_phase[ph, n] is None else float(by_phase[ph, n][li, hi])
                                            for n in names} for ph in PH}} for hi in range(H)]}
              for li in range(L)]

    bins = []
    for b in sorted({k // width for k in keys}):
        g = group(lambda i, b=b: upd[i] is not None and upd[i] // width == b)
        steps = [t.step for t in g["train"]]
        bins.append({
            "bin": b, "updates": [min(steps), max(steps)] if steps else [b * width, (b + 1) * width - 1],
            "training_events": len(steps),
            "training": {k: mean_or_none([getattr(t, k) for t in g["train"] if getattr(t, k) is not None]) for k in TF},
            "head_stat_events": g["head_events"],
            "heads": {n: {"mean": float(a.mean()), "by_layer": [float(x) for x in a.mean(axis=(0, 2))]}
                      for n, a in g["heads"].items()},
            "rows": g["rows"],
            "influence_decode": {k: mean_or_none([x[k] for x in g["infl"]["decode"]])
                                 for k in ("image", "prompt_text", "generated")},
            "matrix": g["matrix"],
            "next_token_entropy": {ph: mean_or_none(g["entropy"][ph]) for ph in PH},
            "credit": {"count": len(g["credit"]), "mean": mean_or_none(g["credit"]),
                       "abs_mean": mean_or_none(np.abs(g["credit"]))},
            "per_token": {m: mean_or_none(g["cells"][m]) for m in GROUP_METRICS},
        })

    def trend(pick):
        pts = [((b["updates"][0] + b["updates"][1]) / 2, pick(b)) for b in bins if pick(b) is not None]
        if not pts:
            return None
        xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        slope = float(np.polyfit(xs, ys, 1)[0]) if len(set(xs)) >= 2 else None
        quarter = max(1, len(pts) // 4)
        return {"bins": len(pts), "first_quarter": float(np.mean(ys[:quarter])),
                "last_quarter": float(np.mean(ys[len(ys) - quarter:])), "slope_per_update": slope}

    gens = {}
    for _, e in dec:
        gens.setdefault(e.generation, {})[e.step] = e.batch_size
    attention_idx = [i for i, e in stat_ev] + [i for i, *_ in row_ev] + [i for i, *_ in mats]
    last_train = max((i for i, e in enumerate(events) if isinstance(e, TrainingState)), default=-1)
    m_last = mats[-1] if mats else None
    credit_all = everything["credit"]
    top = []
    if m_last is not None:
        infl = m_last[3]
        order = sorted(range(infl.size), key=lambda j: (-infl[j], j))[:32]
        top = [{"index": j, "token": m_last[1].key_tokens[j], "type": m_last[1].token_types[j],
                "influence": float(infl[j])} for j in order]
    counts = {}
    for e in events:
        k = f"decode_{e.phase}" if isinstance(e, DecodeState) else e.kind
        counts[k] = counts.get(k, 0) + 1
    return {
        "schema": "vlmrl-analyze/1",
        "source": {"lines": raw.count(b"\n"), "events": len(events), "garbage_lines": rstats.garbage,
                   "truncated_lines": rstats.truncated, "first_error": rstats.first_error,
                   "runs": sum(line.startswith(b'{"vlmrl_log":') for line in raw.split(b"\n")),
                   "run_first_line": 1 + max(i for i, line in enumerate(raw.split(b"\n"))
                                             if line.startswith(b'{"vlmrl_log":'))},
        "parameters": {"density_mass": mass, "diagonal_window": window, "max_bins": max_bins},
        "run": {
            "model": info.model_name,
            "shape": {"num_layers": L, "num_heads": H, "num_kv_heads": info.num_kv_heads, "head_dim": info.head_dim,
                      "dtype": info.dtype, "max_cache": info.max_cache, "batch": info.batch,
                      "vision_depth": info.vision_depth, "deepstack_layers": list(info.deepstack_layers)},
            "device": {"kind": info.device_kind, "process_count": info.process_count},
            "end": next(({"reason": e.reason, "step": e.step, "seconds": e.seconds} for e in reversed(events)
                         if isinstance(e, RunEnd)), None),
            "updates": {"count": len(trains), "first": min(t.step for t in trains), "last": max(t.step for t in trains)},
            "events": dict(sorted(counts.items())),
            "bytes": {"file": len(raw), "by_kind": dict(sorted(kinds_bytes.items())), "skipped_lines": 0},
            "capture": {
                "head_stat_events": len(stat_ev), "attention_row_events": len(row_ev), "matrix_events": len(mats),
                "rejected": {"attn_stats": 0, "attention_row": 0, "matrix": 0, "group": 0},
                "generations": len(gens), "decode_steps_recorded": sum(len(s) for s in gens.values()),
                "step_coverage": sum(len(s) for s in gens.values()) / sum(max(s) + 1 for s in gens.values()),
                "row_coverage": len(dec) / sum(sum(s.values()) for s in gens.values()),
                "unattributed_events": len({i for i in attention_idx if i > last_train}),
            },
        },
        "head_stats": {"names": names, "events": {n: len(stat_ev) for n in names},
                       "events_by_phase": {ph: {n: sum(1 for _, e in stat_ev if e.phase == ph) for n in names}
                                           for ph in PH}},
        "layers": layers,
        "rows": everything["rows"],
        "matrix": {"events": len(mats), "query_rows": everything["mrows"], "means": everything["matrix"],
                   **({"last": {"update": upd[m_last[0]], "layer": m_last[1].layer, "head": m_last[1].head,
                                "pool": m_last[1].pool, "tokens": m_last[1].matrix.shape[0]}} if m_last else {})},
        "steps": {"bin_width": width, "bins": bins, "image_attention_trend": {
            "heads_vision": trend(lambda b: b["heads"].get("vision", {}).get("mean")),
            "decode_row_image": trend(lambda b: b["influence_decode"]["image"]),
            "matrix_vision": trend(lambda b: (b["matrix"] or {}).get("vision"))}},
        "token_influence": {
            "rows": {ph: {"events": len(everything["infl"][ph]),
                          **{k: mean_or_none([x[k] for x in everything["infl"][ph]])
                             for k in (("image", "prompt_text", "generated") if ph == "decode" else ("image", "text"))}}
                     for ph in PH},
            "matrix": {"events": len(mats),
                       "share": {t: mean_or_none([m[4][t] for m in mats]) for t in TY},
                       "per_token": {t: mean_or_none([m[4][t] / m[5][t] for m in mats if m[5][t]]) for t in TY},
                       "last_top_tokens": top}},
        "telemetry": {
            "next_token": {ph: {"entropy": summary(everything["entropy"][ph]), "logprob": summary(everything["logprob"][ph])}
                           for ph in PH},
            "credit": {**summary(credit_all), "abs_mean": mean_or_none(np.abs(credit_all)),
                       "positive_share": float(np.mean(np.array(credit_all) > 0)) if credit_all else None,
                       "negative_share": float(np.mean(np.array(credit_all) < 0)) if credit_all else None},
            "training": {k: summary([getattr(t, k) for t in trains if getattr(t, k) is not None]) for k in TF},
            "per_token": {"group_events": everything["groups"],
                          **{m: summary(everything["cells"][m]) for m in GROUP_METRICS}},
        },
    }
