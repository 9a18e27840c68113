"""Statistics of one attention row (a query's weights over its keys), in numpy.

The log carries whole rows in two places: `DecodeState.attention_row` (the watched
sequence's newest query, mean over layers and heads, one weight per KV-cache slot) and
`AttentionMatrix.matrix` (every prompt query of one layer or the layer mean, at prefill).
The per layer x head statistics the taps reduce on device (`attn_stats`) are read as
recorded; the definitions here are for the rows only, and `DEFINITIONS` says which is which.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

# Mass that `density` asks for: the share of keys needed to hold this much of a row.
DENSITY_MASS = 0.9
# Keys, counted back from (and including) the query's own position, that `diagonal` sums.
DIAGONAL_WINDOW = 8

ROW_STATS = ("entropy", "focus", "density", "diagonal", "sink", "vision")

DEFINITIONS = {
    "averaging": ("every statistic is a plain mean over the recorded events that carry it, prefill "
                  "and decode alike (split by phase where a `by_phase` entry is given); events are "
                  "counted once per recorded sequence row, and an event counts only where its "
                  "arrays are finite and have the run's shape"),
    "heads": ("per layer x head statistics are the taps' own, reduced on device from the newest "
              "query row of each recorded sequence: focus = 1 - H/log(n_keys) (H the row's "
              "entropy in nats; 1 - focus is the normalised entropy), max = largest weight, "
              "vision = mass on image tokens, sink = mass on the first real (non-pad) key. "
              "Per-head entropy in nats, density and diagonal are not in the log: only the four "
              "reduced statistics travel per head"),
    "rows": ("statistics of whole rows (the `attention_row` of decode events, which is the mean "
             "over layers and heads of the watched sequence's newest query; and every query row "
             "of a prompt attention matrix): the row's real keys run from its first non-zero "
             "weight to its end (the sampler left-pads prompts and padded slots get exactly 0), "
             "the row is divided by its sum over them (float16 transport leaves it ~1e-3 off 1)"),
    "entropy": "-sum p log p over the row's real keys, in nats",
    "focus": "1 - entropy / log(n) for a row of n real keys (1 when n == 1)",
    "density": (f"fraction of the row's real keys needed to hold {DENSITY_MASS:g} of its mass: "
                f"the smallest k whose k largest weights sum to >= {DENSITY_MASS:g}, divided by n"),
    "diagonal": (f"mass on the {DIAGONAL_WINDOW} most recent keys: the query's own position and the "
                 f"{DIAGONAL_WINDOW - 1} before it (fewer when the row is shorter)"),
    "sink": "mass on the row's first real key",
    "vision": "mass on image tokens (the event's vision_span for rows; 'vision' key types for matrices)",
    "matrix_rows": ("matrix statistics are means over query rows that see at least two keys "
                    "(causal: query i sees keys 0..i of the recorded, pad-free prompt), then over "
                    "matrix events; when the tap pooled the matrix, keys and the window are "
                    "pooled cells"),
    "influence_rows": ("decode rows: prompt slots are [0, cache_len - step) (one generated token per "
                       "decode step), so mass splits into image, prompt text and generated tokens; "
                       "prefill rows see the prompt only and split into image and text"),
    "influence_matrix": ("influence of key token j = sum over query rows i of p[i, j], divided by the "
                         "number of rows (rows sum to 1, so influences sum to 1); shares are sums by "
                         "token type, per_token divides a share by that type's token count"),
    "updates": ("attention events belong to the update whose `training` line comes next in the log "
                "(the rollout that an update consumes is recorded before it); events after the last "
                "training line are 'unattributed'; updates are grouped into bins of bin_width "
                "consecutive update numbers"),
    "per_token": ("from each update's rollout-group event: every recorded completion token (at most "
                  "64 rows and 2048 token cells an update, the first tokens of each completion): logprob "
                  "and entropy (nats) under the sampling policy, kl = the k3 estimate to the reference "
                  "policy, credit, ratio = the token's probability after the update over before; "
                  "summaries over all cells, bins by the event's own update"),
    "image_attention_trend": ("for each image share (per-head vision mean, decode-row image share, matrix "
                              "vision mass): the mean over the first and over the last quarter of the bins "
                              "that have it (at least one bin each), and the least-squares slope of the bin "
                              "means against the bin's middle update"),
}


def valid_start(row: np.ndarray) -> int:
    """Index of the first non-zero weight (left padding carries exactly 0); len(row) when none."""
    nz = np.flatnonzero(row)
    return int(nz[0]) if nz.size else len(row)


def stats_of_rows(p_rk: np.ndarray, n_r: np.ndarray, vision_k: Optional[np.ndarray],
                  window: int = DIAGONAL_WINDOW, mass: float = DENSITY_MASS) -> dict:
    """ROW_STATS of R normalised rows: row r's real keys are p_rk[r, :n_r[r]], its last one the
    query's own position, the rest of the row zeros. Returns {name: float64 [R]}."""
    n_r = n_r.astype(np.float64)
    xlogx = np.where(p_rk > 0, p_rk * np.log(np.where(p_rk > 0, p_rk, 1.0)), 0.0)
    entropy = -xlogx.sum(axis=1)
    csum = np.cumsum(-np.sort(-p_rk, axis=1), axis=1)
    k = (csum < mass * csum[:, -1:]).sum(axis=1) + 1
    keys = np.arange(p_rk.shape[1])[None, :]
    recent = (keys < n_r[:, None]) & (keys >= n_r[:, None] - window)
    return {
        "entropy": entropy,
        "focus": np.where(n_r > 1, 1.0 - entropy / np.log(np.maximum(n_r, 2.0)), 1.0),
        "density": np.minimum(k, n_r) / n_r,
        "diagonal": (p_rk * recent).sum(axis=1),
        "sink": p_rk[:, 0].copy(),
        "vision": (p_rk[:, vision_k].sum(axis=1) if vision_k is not None
                   else np.zeros(p_rk.shape[0])),
    }


def row_stats(row: np.ndarray, vision_k: Optional[np.ndarray] = None,
              window: int = DIAGONAL_WINDOW, mass: float = DENSITY_MASS) -> Optional[tuple]:
    """(ROW_STATS as floats, first real key, normalised real part) of one row whose last entry
    is the query's own position; None when the row has no mass.

    Args:
      row: float [K] non-negative weights over key slots (left padding as zeros).
      vision_k: bool [K] image keys, or None for none.
    """
    row = np.asarray(row, dtype=np.float64)
    start = valid_start(row)
    p = row[start:]
    total = p.sum()
    if p.size == 0 or not total > 0:
        return None
    p = p / total
    vis = None if vision_k is None else vision_k[start:]
    stats = stats_of_rows(p[None, :], np.array([p.size]), vis, window, mass)
    return {k: float(v[0]) for k, v in stats.items()}, start, p


# Query rows per chunk of a matrix: bounds the float64 working copies (a 4096-key matrix
# takes 256 x 4096 x 8 B = 8 MiB per copy instead of 128 MiB for the whole).
CHUNK_ROWS = 256


def matrix_stats(m_qk: np.ndarray, vision_k: np.ndarray, window: int = DIAGONAL_WINDOW,
                 mass: float = DENSITY_MASS) -> tuple:
    """(sums of ROW_STATS over query rows that see >= 2 keys, their count, influence [K] or None)
    of a causal square matrix over a pad-free prompt: row i sees keys 0..i, zeros included.

    Influence is the column sum of the row-normalised matrix over every row with mass,
    divided by the number of such rows.
    """
    q = m_qk.shape[0]
    sums = dict.fromkeys(ROW_STATS, 0.0)
    used = 0
    influence = np.zeros(q, dtype=np.float64)
    with_mass = 0
    for lo in range(0, q, CHUNK_ROWS):
        i = np.arange(lo, min(q, lo + CHUNK_ROWS))
        tri = np.where(np.arange(q)[None, :] <= i[:, None], m_qk[i].astype(np.float64), 0.0)
        total = tri.sum(axis=1)
        ok = total > 0
        p = tri[ok] / total[ok, None]
        influence += p.sum(axis=0)
        with_mass += int(ok.sum())
        keep = i[ok] >= 1
        if keep.any():
            stats = stats_of_rows(p[keep], i[ok][keep] + 1, vision_k, window, mass)
            for name in ROW_STATS:
                sums[name] += float(stats[name].sum())
            used += int(keep.sum())
    return sums, used, (influence / with_mass if with_mass else None)
