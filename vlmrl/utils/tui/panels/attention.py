"""ATTENTION FLOW: layers x heads heatmap of one attention statistic, one cell per head.

Cells use the ░▒▓█ ramp at 0.25 steps plus a heat colour; heads above 0.75 flash (a
colour-only toggle once per 1/flash_hz, on the heatmap's refresh ticks: see
store.HEAT_HZ); `·` marks a cell never measured. Values are `state.heat`, the newest
stats as of the current refresh tick. The stat (focus, max, vision share, sink
share) cycles with `s`; the rows show the deepest layers that fit (the layout gives at
least `display_layers` rows when it can), and `[` / `]` page through the rest (wrapping).
"""
from __future__ import annotations

import functools
import math
from types import MappingProxyType

import numpy as np

from vlmrl.utils.tui.canvas import PLAIN, Canvas
from vlmrl.utils.tui.palette import NOT_MEASURED, RAMP
from vlmrl.utils.tui.panels.common import RowCache, message, put, share_row, title_rule
from vlmrl.utils.tui.render_cache import RenderCache

TITLE = "ATTENTION FLOW"
GLYPHS = tuple(RAMP) + (NOT_MEASURED,)  # by `levels`: 4 (NaN) picks the last entry
LEGEND = "░<.25 ▒<.5 ▓<.75 █≥.75 (flash)"
STAT_LABEL = MappingProxyType({"focus": "focus", "max": "max weight", "vision": "vision share", "sink": "sink share"})


# Right-closed ramp edges; NaN sorts after every number, so `levels` is one C call.
_EDGES = np.array([0.25, 0.5, 0.75, np.nan], dtype=np.float32)


def levels(values: np.ndarray) -> np.ndarray:
    """Ramp level per value, an index into GLYPHS-shaped tables: 0..3 at 0.25 steps
    (clipped below 0 and above 1), 4 where NaN (not measured)."""
    return np.searchsorted(_EDGES, np.asarray(values, dtype=np.float32), side="right")


def page_bounds(num_layers: int, rows: int, page: int):
    """(lo, hi, page, pages) of the layers shown; page 0 holds the last `rows` layers."""
    rows = max(1, min(rows, num_layers))
    pages = max(1, math.ceil(num_layers / rows))
    page %= pages
    hi = num_layers - page * rows
    return max(0, hi - rows), hi, page, pages


def layout_rows(height: int, display_layers: int, num_layers: int):
    """(layer rows, legend shown) for a panel of `height` rows.

    The layout gives at least `display_layers` rows when it can and more on tall
    terminals; once `display_layers` rows fit, one row goes to the legend.
    """
    avail = max(0, height - 1)
    rows = avail - 1 if avail - 1 >= display_layers else avail
    rows = max(0, min(rows, num_layers))
    return rows, avail > rows


def cache_key(state, view, now):
    b = view.batch_index % state.batch_size()
    return (state.heat_version(b), state.run_v, b, view.stat_index, view.layer_page, view.display_layers,
            view.heat_flash_on(now))


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    c = Canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    b = view.batch_index % state.batch_size()
    stat = view.stat
    arr = state.heat.get(b, {}).get(stat)
    label = STAT_LABEL.get(stat, stat)
    if arr is None or arr.size == 0:
        title_rule(cache, c, 0, f"{TITLE} · {label}", theme, right="n/a", right_style=theme.na)
        message(c, 1, f"{label}: n/a (not measured yet) · s: next stat", theme)
        return c
    L, H = arr.shape
    rows, legend = layout_rows(height, view.display_layers, L)
    lo, hi, page, pages = page_bounds(L, max(rows, 1), view.layer_page)
    pg = f" · pg {page + 1}/{pages}" if pages > 1 else ""
    right = (f"L{lo}-{hi - 1} of {L} · {H} heads{pg}", f"L{lo}-{hi - 1}/{L}{pg}",
             f"L{lo}-{hi - 1} p{page + 1}/{pages}" if pages > 1 else f"L{lo}-{hi - 1}/{L}", f"L{lo}-{hi - 1}")
    title_rule(cache, c, 0, f"{TITLE} · {label}", theme, right=right)
    if rows <= 0:
        return c
    flash = view.heat_flash_on(now)
    label_w = len(f"L{L - 1}") + 1
    heads_fit = max(0, min(H, width - label_w - 2))
    tail = f"+{H - heads_fit}" if heads_fit < H else ""
    # Rows are "  L7 " + one glyph per head (+ "+n" heads that did not fit), then blanks.
    # No per-row numbers: they would change every step on every row and swell the diffs;
    # the glyphs carry the values. Each row is built as three list pieces (cells and styles
    # of the glyphs gathered in C from the ramp levels), not cell by cell.
    lv = levels(arr[lo:hi, :heads_fit])
    glyph_table, style_table = _tables(theme, flash, cache.memo("attention.tables"))
    n = label_w + heads_fit + len(tail)
    pad = max(0, width - n)
    tail_c, tail_s = list(tail) + [" "] * pad, [theme.dim] * len(tail) + [PLAIN] * pad
    label_s = [theme.label] * label_w
    rows_c = [lab + g + tail_c for lab, g in zip(_labels(lo, hi, label_w), glyph_table[lv].tolist())]
    rows_s = [label_s + st + tail_s for st in style_table[lv].tolist()]
    if n > width:  # a panel narrower than its labels
        rows_c, rows_s = [r[:width] for r in rows_c], [r[:width] for r in rows_s]
    c.chars[1:1 + hi - lo] = rows_c  # hi - lo < rows on a short last page
    c.styles[1:1 + hi - lo] = rows_s
    if legend:  # the same row every time: drawn once (a non-ASCII put walks it char by char)
        legends = cache.memo("attention.legends", lambda: RowCache(limit=64))
        share_row(c, 1 + rows, legends.get((width, id(theme)), width, lambda row: _legend(row, theme)))
    return c


@functools.lru_cache(maxsize=64)
def _labels(lo: int, hi: int, label_w: int):
    """The label cells ("  L7 ") of layers lo..hi-1; read-only (rows copy them)."""
    return tuple(list(f"L{layer}".rjust(label_w - 1) + " ") for layer in range(lo, hi))


def _tables(theme, flash: bool, tables: dict):
    """(glyph, style) per ramp level (4: not measured) as object arrays, to gather in C;
    kept in `tables` by (theme, flash)."""
    key = (id(theme), flash)
    hit = tables.get(key)
    if hit is None or hit[0] is not theme:
        hot = theme.heat_flash if flash else theme.heat[3]
        glyphs, styles = np.empty(len(GLYPHS), dtype=object), np.empty(len(GLYPHS), dtype=object)
        for i, st in enumerate((theme.heat[0], theme.heat[1], theme.heat[2], hot, theme.na)):
            glyphs[i], styles[i] = GLYPHS[i], st  # one by one: Styles are tuples numpy would unpack
        hit = tables[key] = (theme, glyphs, styles)  # holding theme: its id is not reused
    return hit[1], hit[2]


def _legend(row: Canvas, theme) -> None:
    full = LEGEND + " · s stat · [ ] page"
    put(row, 1, 0, full if len(full) <= row.width - 2 else LEGEND, theme.dim, max_width=row.width - 2)
