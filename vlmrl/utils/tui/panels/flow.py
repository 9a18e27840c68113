"""Computation flow: mRoPE → Q/K/V → Attention → KV Cache Write, then sampling.

Each decode event means one whole step ran. After it arrives the panel sweeps the
stages in the order they ran, pacing the sweep on the measured gap between events (a
fifth of it per stage, at most 60 ms), and then rests on SAMPLING until the next event.
With no event for a while the flow reads `idle`. The lit indicator flashes at flash_hz.
"""
from __future__ import annotations

from vlmrl.utils.tui.canvas import Canvas, text_width
from vlmrl.utils.tui.panels.common import RowCache, age, fmt_int, message, put, share_row, open_panel, title_rule

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


_CHAINS = RowCache(limit=256)


def _chain(row: Canvas, stage, theme) -> None:
    """mRoPE → Q/K/V → Attention → KV Cache Write with the lit stage highlighted."""
    names = STAGES if row.width >= sum(map(text_width, STAGES)) + 3 * 3 + 2 else SHORT
    x = 1
    for i, name in enumerate(names):
        if i:
            x = put(row, x, 0, " → ", theme.rule)
        x = put(row, x, 0, name, theme.stage_lit if stage == i else theme.stage_idle)


def _indicator(c, x, y, name, detail, lit, flash, on_style, off_style, theme) -> int:
    glyph = "⚡ " if lit else "·  "
    style = (on_style if flash else off_style) if lit else theme.dim
    x = put(c, x, y, glyph + name, style)
    if detail:
        x = put(c, x, y, " " + detail, theme.label if lit else theme.dim)
    return x + 2


def render(state, view, width, height, now, theme) -> Canvas:
    c, b, d = open_panel(state, view, width, height)
    if width <= 0 or height <= 0:
        return c
    stage = stage_at(state, b, now)
    phase = "idle" if stage is None else ("prefill" if d is not None and d.phase == "prefill" else "decode")
    title_rule(c, 0, TITLE, theme, right=phase, right_style=theme.dim if stage is None else theme.value)
    if height < 2:
        return c
    share_row(c, 1, _CHAINS.get((stage, width, id(theme)), width, lambda row: _chain(row, stage, theme)))
    if height < 3:
        return c
    if d is None:
        message(c, 2, "no decode step seen yet", theme)
        return c
    flash = view.flash_on(now)
    details = [f"L{d.active_layer} H{d.active_head}", f"slot {max(d.cache_len - 1, 0)}", ""]
    # 3 indicators of "⚡ NAME" (+2 apart); details only when the whole line fits.
    if 1 + sum(3 + len(n) + 2 for n in ("ACTIVE", "WRITE", "SAMPLING")) + sum(len(t) + 1 for t in details) > width:
        details = ["", "", ""]
    x = _indicator(c, 1, 2, "ACTIVE", details[0], stage == 2, flash, theme.active_on, theme.active_off, theme)
    x = _indicator(c, x, 2, "WRITE", details[1], stage == 3, flash, theme.write_on, theme.write_off, theme)
    _indicator(c, x, 2, "SAMPLING", "", stage == SAMPLING, flash, theme.sampling_on, theme.sampling_off, theme)
    if height >= 4:
        gap = state.gap_for(b)
        rate = "n/a" if gap is None else f"{1.0 / max(gap, 1e-3):.0f}"
        rate = f"{rate} steps/s"
        msg = f"step {fmt_int(d.step)} · phase {d.phase} · {rate}"
        put(c, 1, 3, msg, theme.label)
    return c
