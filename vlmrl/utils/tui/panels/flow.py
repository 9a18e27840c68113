"""Computation flow: mRoPE → Q/K/V → Attention → KV write, each with a quantity of the step.

A decode event means one whole step ran; the taps do not time its stages, so the panel
draws none: every stage shows a real figure of the newest step (the query's mRoPE
t/h/w, the Q/K/V head layout the step projected into, the most focused layer/head
and its focus, the cache slot written and the bytes one slot holds), and the `⚡ STEP`
indicator flashes only to mark that a step arrived. With no event for a while the flow
reads `idle`.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from vlmrl.utils.tui.canvas import PLAIN, Canvas, truncate
from vlmrl.utils.tui.panels.common import NA, age, fmt_bytes, fmt_int, message, put, remember, share_row, title_row
from vlmrl.utils.tui.panels.rows import compose_row, fresh_row, sparse_canvas
from vlmrl.utils.tui.render_cache import RenderCache

TITLE = "COMPUTATION FLOW"
STAGES = ("mRoPE", "Q/K/V", "Attention", "KV write")
SHORT = ("mRoPE", "QKV", "Attn", "KV")
ARRIVED_S = 0.25  # how long `⚡ STEP` stays lit after a step's event arrives


def just_arrived(state, batch_index: int, now: float) -> bool:
    """True for ARRIVED_S after the shown row's newest decode event arrived."""
    a = age(state, batch_index, now)
    return a is not None and a < ARRIVED_S


def is_idle(state, batch_index: int, now: float) -> bool:
    a = age(state, batch_index, now)
    gap = state.gap_for(batch_index) or 0.05
    return a is None or a > max(1.0, 5.0 * gap)


def cache_key(state, view, now):
    """What the frame depends on: the row's events, the arrival flash, idleness, the run's shape."""
    b = view.batch_index % state.batch_size()
    lit = just_arrived(state, b, now)
    return (state.row_version(b), b, lit, lit and view.flash_on(now), is_idle(state, b, now), id(state.run))


def _focus(d) -> Optional[float]:
    """The focus of the step's most focused layer/head (the one ACTIVE names)."""
    pat = d.attention_pattern if d.attention_pattern is not None else (d.attn_stats or {}).get("focus")
    if pat is None:
        return None
    try:
        value = float(np.asarray(pat, dtype=np.float32)[int(d.active_layer), int(d.active_head)])
    except (IndexError, ValueError, TypeError):
        return None
    return value if value == value else None


def stage_figures(state, d, short: bool) -> List[str]:
    """One figure per stage, from the step's event and the run's shape; n/a when not known."""
    mrope = f"{d.mrope_t}/{d.mrope_h}/{d.mrope_w}" if short else f"t{d.mrope_t} h{d.mrope_h} w{d.mrope_w}"
    run = state.run
    if run is None:
        qkv = NA
    else:
        qkv = (f"{run.num_heads}/{run.num_kv_heads}×{run.head_dim}" if short
               else f"{run.num_heads}q {run.num_kv_heads}kv ×{run.head_dim}d")
    focus = _focus(d)
    attn = f"L{d.active_layer}H{d.active_head}" if short else f"L{d.active_layer} H{d.active_head}"
    if focus is not None:
        attn += f" {focus:.2f}"
    elif d.attention_pattern is None and not d.attn_stats:
        attn = NA
    slot = max(int(d.cache_len) - 1, 0)
    per_slot = int(d.kv_bytes) // int(d.cache_len) if d.kv_bytes is not None and d.cache_len else None
    kv = f"{slot}" if short else f"slot {slot}"
    if per_slot is not None:
        kv += f" +{fmt_bytes(per_slot)}"
    return [mrope, qkv, attn, kv]


def _chain_pieces(names, figures, lit: bool, theme) -> List[Tuple[str, object]]:
    name_style = theme.stage_lit if lit else theme.stage_idle
    pieces: List[Tuple[str, object]] = []
    for i, (name, fig) in enumerate(zip(names, figures)):
        if i:
            pieces.append((" → ", theme.rule))
        pieces += [(name, name_style), (" " + fig, theme.value if fig != NA else theme.na)]
    return pieces


def _line(cache, c: Canvas, y: int, pieces, key) -> None:
    rows = cache.memo("flow.rows")
    row = rows.get(key)
    if row is None:
        row = compose_row(c.width, 1, pieces)
        if row is not None:
            row = remember(rows, key, (tuple(row[0]), tuple(row[1])), 256)
    if row is None:  # wide or odd text: put decides what shows
        fresh_row(c, y)
        x = 1
        for text, style in pieces:
            x = put(c, x, y, text, style)
    else:
        share_row(c, y, row)


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    b = view.batch_index % state.batch_size()
    d = state.decode_for(b)
    c = sparse_canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    idle = is_idle(state, b, now)
    phase = "idle" if idle or d is None else ("prefill" if d.phase == "prefill" else "decode")
    share_row(c, 0, title_row(cache, width, TITLE, theme, right=phase,
                              right_style=theme.dim if idle else theme.value))
    if height < 2:
        return c
    if d is None:
        fresh_row(c, 1)
        message(c, 1, "no decode step seen yet", theme)
        return c
    lit = just_arrived(state, b, now)
    y = 1
    for pieces in _chain_rows(state, d, lit, width, theme):
        if y >= height:
            return c
        _line(cache, c, y, pieces, (tuple(t for t, _ in pieces), lit, width, id(theme)))
        y += 1
    flash = lit and view.flash_on(now)
    gap = state.gap_for(b)
    rate = NA if gap is None else f"{1.0 / max(gap, 1e-3):.0f}"
    tok = '"' + truncate(str(d.token_text), 16) + '"'  # tokenizer text is untrusted
    lines = [[("⚡ STEP" if lit else "·  STEP", (theme.sampling_on if flash else theme.sampling_off) if lit else theme.dim),
              (f" {fmt_int(d.step)} arrived" if lit else f" {fmt_int(d.step)}", theme.label if lit else theme.dim),
              ("  ", PLAIN), (f"token {tok} p {float(d.token_prob):.2f}", theme.label)],
             [(f"phase {d.phase} · {rate} steps/s between events (stages not timed)", theme.label)]]
    for pieces in lines:
        if y >= height:
            break
        _line(cache, c, y, pieces, (tuple(t for t, _ in pieces), lit, flash, width, id(theme)))
        y += 1
    return c


def _chain_rows(state, d, lit: bool, width: int, theme) -> list:
    """The stage chain on one row when it fits, else split after Q/K/V onto two; long
    names and figures when they fit, else the short ones."""
    for names, short in ((STAGES, False), (SHORT, True)):
        pieces = _chain_pieces(names, stage_figures(state, d, short), lit, theme)
        if _cells(pieces) + 2 <= width:
            return [pieces]
    for names, short in ((STAGES, False), (SHORT, True)):
        pieces = _chain_pieces(names, stage_figures(state, d, short), lit, theme)
        first, second = pieces[:5] + [(" →", theme.rule)], pieces[6:]
        if max(_cells(first), _cells(second)) + 2 <= width or short:
            return [first, second]
    return []


def _cells(pieces) -> int:
    return sum(len(t) for t, _ in pieces)
