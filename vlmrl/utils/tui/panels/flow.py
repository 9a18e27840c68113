"""Computation flow: mRoPE → Q/K/V → Attention → KV Cache Write, then sampling.

Each decode event means one whole step ran. After it arrives the panel sweeps the
stages in the order they ran, pacing the sweep on the measured gap between events (a
fifth of it per stage, at most 60 ms), and then rests on SAMPLING until the next event.
With no event for a while the flow reads `idle`. The lit indicator flashes at flash_hz.
"""
from __future__ import annotations

from vlmrl.utils.tui.canvas import PLAIN, Canvas, text_width
from vlmrl.utils.tui.panels.common import RowCache, age, fmt_int, message, put, remember, share_row, title_row
from vlmrl.utils.tui.panels.rows import compose_row, fresh_row, sparse_canvas, text_cells
from vlmrl.utils.tui.render_cache import RenderCache

TITLE = "COMPUTATION FLOW"
STAGES = ("mRoPE", "Q/K/V", "Attention", "KV Cache Write")
SHORT = ("mRoPE", "QKV", "Attn", "KV Write")
SAMPLING = len(STAGES)  # stage index after the four chain stages
MAX_STAGE_S = 0.06
DEFAULT_GAP = 0.05  # pacing before two events have measured the real gap


def stage_at(state, batch_index: int, now: float):
    """The stage lit now (0..4, 4 = sampling) or None when idle / nothing seen yet."""
    a = age(state, batch_index, now)
    if a is None:
        return None
    gap = max(state.gap_for(batch_index) or DEFAULT_GAP, 1e-3)
    if a > max(1.0, 5.0 * gap):
        return None
    stage_s = min(MAX_STAGE_S, gap / 5.0)
    return min(int(a / stage_s), SAMPLING)


def cache_key(state, view, now):
    b = view.batch_index % state.batch_size()
    stage = stage_at(state, b, now)
    return (state.row_version(b), b, stage, stage is not None and view.flash_on(now))


def _chain(row: Canvas, stage, theme) -> None:
    """mRoPE → Q/K/V → Attention → KV Cache Write with the lit stage highlighted."""
    names = STAGES if row.width >= sum(map(text_width, STAGES)) + 3 * 3 + 2 else SHORT
    x = 1
    for i, name in enumerate(names):
        if i:
            x = put(row, x, 0, " → ", theme.rule)
        x = put(row, x, 0, name, theme.stage_lit if stage == i else theme.stage_idle)


def _indicator(name, detail, lit, flash, on_style, off_style, theme) -> list:
    """The (text, style) pieces of `⚡ NAME detail` (lit) or `·  NAME detail`."""
    glyph = "⚡ " if lit else "·  "
    style = (on_style if flash else off_style) if lit else theme.dim
    if detail:
        return [(glyph + name, style), (" " + detail, theme.label if lit else theme.dim)]
    return [(glyph + name, style)]


def _indicators(stage, flash, active: str, slot: str, theme) -> tuple:
    return (_indicator("ACTIVE", active, stage == 2, flash, theme.active_on, theme.active_off, theme),
            _indicator("WRITE", slot, stage == 3, flash, theme.write_on, theme.write_off, theme),
            _indicator("SAMPLING", "", stage == SAMPLING, flash, theme.sampling_on, theme.sampling_off, theme))


def _indicator_row(width: int, stage, flash, active: str, slot: str, theme) -> tuple:
    """(the composed indicator row or None, column of the layer/head figure, column of
    the slot figure): the figures sit one blank after their indicator's name."""
    parts = _indicators(stage, flash, active, slot, theme)
    row = compose_row(width, 1, parts[0] + [GAP] + parts[1] + [GAP] + parts[2])
    name_a, name_w = text_cells(parts[0][0][0]), text_cells(parts[1][0][0])
    if row is None or name_a is None or name_w is None:
        return None, 0, 0
    at_active = 1 + len(name_a) + 1
    at_slot = 1 + len(name_a) + (len(active) + 1 if active else 0) + 2 + len(name_w) + 1
    return (tuple(row[0]), tuple(row[1])), at_active, at_slot  # kept: immutable


INDICATORS = ("ACTIVE", "WRITE", "SAMPLING")
# 3 indicators of "⚡ NAME" (+2 apart) from column 1: details only when the whole line fits
INDICATOR_CELLS = 1 + sum(3 + len(n) + 2 for n in INDICATORS)
GAP = ("  ", PLAIN)  # two blank cells between indicators


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    b = view.batch_index % state.batch_size()
    d = state.decode_for(b)
    # Rows are shared: the cached title and chain rows, the composed lines below them
    c = sparse_canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    stage = stage_at(state, b, now)
    phase = "idle" if stage is None else ("prefill" if d is not None and d.phase == "prefill" else "decode")
    share_row(c, 0, title_row(cache, width, TITLE, theme, right=phase, right_style=theme.dim if stage is None else theme.value))
    if height < 2:
        return c
    chains = cache.memo("flow.chains", lambda: RowCache(limit=256))
    share_row(c, 1, chains.get((stage, width, id(theme)), width, lambda row: _chain(row, stage, theme)))
    if height < 3:
        return c
    if d is None:
        fresh_row(c, 2)
        message(c, 2, "no decode step seen yet", theme)
        return c
    flash = view.flash_on(now)
    active, slot = f"L{d.active_layer} H{d.active_head}", f"slot {max(d.cache_len - 1, 0)}"
    if INDICATOR_CELLS + len(active) + len(slot) + 3 > width:
        active = slot = ""  # details only when the whole line fits
    row = None
    if (active + slot).isascii() and (active + slot).isprintable():
        # Between steps only the layer/head and slot figures change: one template per
        # lit stage, flash phase and figure widths, with this step's figures written in.
        templates = cache.memo("flow.templates")  # by (stage, flash, figure widths, width, theme)
        key = (stage, flash, len(active), len(slot), width, id(theme))
        tpl = templates.get(key)
        if tpl is None:
            tpl = remember(templates, key, _indicator_row(width, stage, flash, active, slot, theme), 256)
        row, at_active, at_slot = tpl
        if row is not None and (active or slot):
            chars = list(row[0])
            chars[at_active:at_active + len(active)] = active
            chars[at_slot:at_slot + len(slot)] = slot
            row = (chars, row[1])
    if row is None:  # cut at the edge: put decides what shows
        fresh_row(c, 2)
        x = 1
        for part in _indicators(stage, flash, active, slot, theme):
            for text, style in part:
                x = put(c, x, 2, text, style)
            x += 2
    else:
        share_row(c, 2, row)
    if height >= 4:
        gap = state.gap_for(b)
        rate = "n/a" if gap is None else f"{1.0 / max(gap, 1e-3):.0f}"
        rate = f"{rate} steps/s"
        msg = f"step {fmt_int(d.step)} · phase {d.phase} · {rate}"
        row = compose_row(width, 1, [(msg, theme.label)])
        if row is None:
            fresh_row(c, 3)
            put(c, 1, 3, msg, theme.label)
        else:
            share_row(c, 3, row)
    return c
