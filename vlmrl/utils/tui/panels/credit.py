"""TOKEN CREDIT: tokens sorted by |credit| with signed bars around a centre axis;
the top one flashes like the hot heatmap heads (one toggle per 1/flash_hz)."""
from __future__ import annotations

import math

from vlmrl.utils.tui.canvas import Canvas, text_width, truncate
from vlmrl.utils.tui.panels.common import RowCache, fmt_int, message, put, share_row, title_rule
from vlmrl.utils.tui.render_cache import RenderCache

TITLE = "TOKEN CREDIT"
TOKEN_CELLS = 12


def cache_key(state, view, now):
    return (state.credit_v, view.heat_flash_on(now))


def ranked(credit):
    """(position, token, credit) sorted by |credit| descending; non-finite credits last."""
    items = []
    for i, (tok, val) in enumerate(zip(credit.tokens, credit.credits)):
        try:
            v = float(val)
        except (TypeError, ValueError):
            v = math.nan
        items.append((i, str(tok), v))
    return sorted(items, key=lambda it: -abs(it[2]) if math.isfinite(it[2]) else math.inf)


def signed_bar(value: float, scale: float, half: int):
    """(left, right) strings of `half` cells each: negative fills left of the axis."""
    if not math.isfinite(value) or scale <= 0:
        return " " * half, " " * half
    n = min(half, int(round(abs(value) / scale * half)))
    if value < 0:
        return " " * (half - n) + "█" * n, " " * half
    return " " * half, "█" * n + " " * (half - n)


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    c = Canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    cr = state.credit
    if cr is None:
        title_rule(cache, c, 0, TITLE, theme, right="n/a", right_style=theme.na)
        if height > 1:
            message(c, 1, "no credit assigned yet", theme)
        return c
    items, scale, pos_w = _ranked_once(cr, cache.memo("credit.ranked"))
    title_rule(cache, c, 0, TITLE, theme, right=f"step {fmt_int(cr.step)} · {len(items)} tokens")
    if not items:
        if height > 1:
            message(c, 1, "empty credit list", theme)
        return c
    value_w = 10
    half = max(1, (width - 2 - pos_w - (TOKEN_CELLS + 2) - value_w - 3) // 2)
    flash = view.heat_flash_on(now)  # with the hot heads: a toggle per 1/flash_hz
    row_cache = cache.memo("credit.rows", RowCache)
    for r, (i, tok, v) in enumerate(items[: height - 1]):
        top = r == 0
        key = (i, tok, v, scale, half, pos_w, width, top and flash, top, id(theme))
        share_row(c, r + 1, row_cache.get(key, width, lambda row, i=i, tok=tok, v=v, top=top: _draw_row(
            row, i, tok, v, top, flash, scale, half, pos_w, theme)))
    return c


def _ranked_once(cr, last: dict):
    """(ranked items, bar scale, position column width) of a credit event. The panel redraws
    for the top row's flash with the same (never mutated) event, so the last is kept in
    `last` (with the event itself, so its id is not reused)."""
    if last.get("event") is not cr:
        items = ranked(cr)
        finite = [abs(v) for _, _, v in items if math.isfinite(v)]
        last.update(event=cr, ranked=(items, max(finite) if finite else 0.0, len(f"#{len(items) - 1}") + 1))
    return last["ranked"]


def _draw_row(row: Canvas, i, tok, v, top, flash, scale, half, pos_w, theme) -> None:
    x = put(row, 0, 0, "▶" if top else " ", theme.warn if top else theme.plain)
    x = put(row, x, 0, f"#{i}".ljust(pos_w), theme.label)
    quoted = '"' + truncate(tok, TOKEN_CELLS) + '"'
    x = put(row, x, 0, quoted, (theme.bar_top_on if flash else theme.token) if top else theme.value)
    x += TOKEN_CELLS + 2 - text_width(quoted) + 1
    left, right = signed_bar(v, scale, half)
    x = put(row, x, 0, left, theme.bar_neg)
    x = put(row, x, 0, "│", theme.rule)
    x = put(row, x, 0, right, theme.bar_pos)
    finite = math.isfinite(v)
    text = "n/a" if not finite else (f"{v:+.3f}" if abs(v) < 1000 else f"{v:+.2e}")  # never wider than 9
    put(row, x + 1, 0, text, theme.value if finite else theme.na)
