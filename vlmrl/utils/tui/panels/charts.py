"""Charts view (key c): braille line charts of every training scalar over the updates.

One chart per scalar the run logged (reward mean with its ± std band, KL, loss, policy
entropy, clip fraction, grad norm, learning rate, tok/s), laid out as a grid that fills
the terminal: 80x24 shows the first six, 240x70 all of them. Each chart has the value at
the top, middle and bottom of its y axis and the first and last step on its x axis. `s`
cycles EMA smoothing (off, 0.6, 0.9); the raw values stay as a faint dotted line. The
reward's ± std band is a sparse dot texture behind its mean line.
With `--compare` a second run is drawn dashed in a second colour, named in the legend.
The values plotted are those the TrainingState events carried (`chart_model`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Tuple

import numpy as np

from vlmrl.utils.tui.canvas import Canvas, Rect, text_width, truncate
from vlmrl.utils.tui.chart_model import (BRAILLE, SERIES, SMOOTHING, ChartModel, band, braille, chart_model, fmt_axis,
                                         raster, to_pixels)
from vlmrl.utils.tui.panels.common import fmt_int, memo_canvas, message, put, put_glyphs, title_rule
from vlmrl.utils.tui.render_cache import RenderCache

TITLE = "TRAINING CHARTS"
MIN_W, MIN_H = 30, 6  # a chart smaller than this says too little to be worth its place
ASPECT = 3.0  # preferred chart width / height in cells (a cell is about twice as tall as wide)
OTHER_DASH, FAINT_DASH = (2, 4), (1, 4)  # (on, period) in pixel columns
MAIN_GLYPH, OTHER_GLYPH = "⠤⠤", "⠤ "  # legend samples of a solid and a dashed line


@dataclasses.dataclass(frozen=True)
class ChartsView:
    smoothing: int = 0  # index into chart_model.SMOOTHING


def get_view(view) -> ChartsView:
    cv = (getattr(view, "mode_state", None) or {}).get("charts")
    return cv if isinstance(cv, ChartsView) else ChartsView()


def handle_key(view, key: str, state=None, cache=None):
    """s / S: next / previous EMA smoothing."""
    cv = get_view(view)
    if key not in ("s", "S"):
        return view
    step = 1 if key == "s" else -1
    st = dict(getattr(view, "mode_state", None) or {})
    st["charts"] = ChartsView((cv.smoothing + step) % len(SMOOTHING))
    return view.replace(mode_state=st)


def cache_key(state, view, now):
    return (state.train_v, id(state.compare), get_view(view))


def models(state, view) -> List[ChartModel]:
    """The charts there is data for, in SERIES order."""
    other = state.compare.history if state.compare is not None else None
    weight = SMOOTHING[get_view(view).smoothing % len(SMOOTHING)]
    out = []
    for series in SERIES:
        m = chart_model(series, state.history, other, weight)
        if m is not None:
            out.append(m)
    return out


def grid_shape(n: int, width: int, height: int) -> Tuple[int, int]:
    """(columns, rows) of charts: as many charts as fit at MIN_W x MIN_H, then the fewest
    empty places, then the shape whose charts come closest to ASPECT."""
    best, best_score = (0, 0), None
    for cols in range(1, max(1, width // MIN_W) + 1):
        rows = min(height // MIN_H, -(-n // cols))
        if rows < 1 or width // cols < MIN_W:
            continue
        shown = min(n, cols * rows)
        aspect = (width / cols) / (height / rows)
        score = (shown, -(cols * rows - shown), -abs(math.log(aspect / ASPECT)))
        if best_score is None or score > best_score:
            best, best_score = (cols, rows), score
    return best


def chart_rects(state, view, width: int, height: int) -> List[Tuple[ChartModel, Rect]]:
    """Each chart drawn and its rectangle in a view of width x height (row 0: legend)."""
    ms = models(state, view)
    cols, rows = grid_shape(len(ms), width, height - 1)
    out = []
    for i, m in enumerate(ms[: cols * rows]):
        r, col = divmod(i, cols)
        x0, x1 = col * width // cols, (col + 1) * width // cols
        y0, y1 = 1 + r * (height - 1) // rows, 1 + (r + 1) * (height - 1) // rows
        out.append((m, Rect(x0, y0, x1 - x0 - (1 if col < cols - 1 else 0), y1 - y0)))
    return out


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    """The view's canvas; kept in the dashboard's RenderCache until what it shows changes
    (the layout redraws a mode's screen every frame)."""
    cache = RenderCache() if cache is None else cache
    key = (cache_key(state, view, now), width, height, id(theme), state.store_id)
    return memo_canvas(cache.memo("charts.canvas"), key, lambda: _draw(state, view, width, height, theme, cache))


def _draw(state, view, width, height, theme, cache) -> Canvas:
    c = Canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    cv = get_view(view)
    weight = SMOOTHING[cv.smoothing % len(SMOOTHING)]
    placed = chart_rects(state, view, width, height)
    hidden = len(models(state, view)) - len(placed)
    ema = f"EMA {weight:g}" if weight else "EMA off"
    right = [f"{ema} (s) · +{hidden} more: enlarge", f"{ema} (s)"] if hidden else [f"{ema} (s) · c/Esc: back", f"{ema} (s)"]
    title_rule(cache, c, 0, TITLE, theme, right=right)
    _legend(c, state, theme)
    if not placed:
        status = state.run.status if state.run is not None and state.run.status else ""
        message(c, 2, ("no training update yet: charts appear after the first update"
                       + (f" (run: {status})" if status else "")) if not state.history
                else "terminal too small for a chart", theme)
        return c
    for m, rect in placed:
        _chart(c, rect, m, weight, theme)
    return c


def labels(state) -> Tuple[str, str]:
    comp = state.compare
    return (comp.label, comp.other_label) if comp is not None else ("this run", "")


def _legend(c: Canvas, state, theme) -> None:
    """`⠤⠤ A  ⠤ B` after the title, when a second run is shown."""
    if state.compare is None:
        return
    a, b = labels(state)
    x = text_width(f"━ {TITLE} ") + 1
    room = c.width - x - 24
    if room < 12:
        return
    each = max(4, (room - 8) // 2)
    x = put(c, x, 0, " " + MAIN_GLYPH + " ", theme.chart_main)
    x = put(c, x, 0, truncate(a, each) + " ", theme.value)
    x = put(c, x, 0, " " + OTHER_GLYPH + " ", theme.chart_other)
    put(c, x, 0, truncate(b, each) + " ", theme.value)


def plot_area(m: ChartModel, rect: Rect) -> Rect:
    """Where a chart's braille cells go inside its rectangle (after the y labels and axis)."""
    x0, y0, w, h = rect
    rows = h - 2
    gutter = max(text_width(t) for _, t in _y_marks(m.y_range[0], m.y_range[1], rows)) + 1
    return Rect(x0 + gutter + 1, y0 + 1, w - gutter - 1, rows)


def _chart(c: Canvas, rect: Rect, m: ChartModel, weight: float, theme) -> None:
    x0, y0, w, h = rect
    lo, hi = m.y_range
    area = plot_area(m, rect)
    rows, cols, gutter = area.height, area.width, area.x - x0 - 1
    marks = _y_marks(lo, hi, rows)
    if rows < 1 or cols < 4:
        return
    _title(c, x0, y0, w, m, weight, theme)
    px_w, px_h = cols * 2, rows * 4
    layers = []  # (dot grid, style), highest priority first
    if m.main.steps:
        xs, ys = to_pixels(m.main.steps, m.shown, m.x_range, m.y_range, px_w, px_h)
        layers.append((raster(xs, ys, px_w, px_h), theme.chart_main))
    if m.other is not None:
        xs, ys = to_pixels(m.other.steps, m.other_shown, m.x_range, m.y_range, px_w, px_h)
        layers.append((raster(xs, ys, px_w, px_h, OTHER_DASH), theme.chart_other))
    if weight and m.main.steps:
        xs, ys = to_pixels(m.main.steps, m.main.values, m.x_range, m.y_range, px_w, px_h)
        layers.append((raster(xs, ys, px_w, px_h, FAINT_DASH), theme.chart_faint))
    if m.band is not None:
        xs, low = to_pixels(m.main.steps, m.band[0], m.x_range, m.y_range, px_w, px_h)
        _, high = to_pixels(m.main.steps, m.band[1], m.x_range, m.y_range, px_w, px_h)
        layers.append((band(xs, high, low, px_w, px_h), theme.chart_faint))
    codes = [braille(g) for g, _ in layers]
    allbits = np.bitwise_or.reduce(codes, axis=0) if codes else np.zeros((rows, cols), np.int64)
    style_idx = np.full((rows, cols), -1)
    for i in range(len(codes) - 1, -1, -1):  # the first layer with dots in a cell colours it
        style_idx[codes[i] != 0] = i
    styles = [st for _, st in layers]
    for r in range(rows):
        y = y0 + 1 + r
        glyphs = [BRAILLE[b] if b else " " for b in allbits[r].tolist()]
        row_styles = [styles[i] if i >= 0 else theme.plain for i in style_idx[r].tolist()]
        put_glyphs(c, x0 + gutter + 1, y, glyphs, row_styles)
        put(c, x0 + gutter, y, "│", theme.rule)
    for r, text in marks:
        put(c, x0 + gutter - 1 - text_width(text), y0 + 1 + r, text, theme.label)
        put(c, x0 + gutter, y0 + 1 + r, "┤", theme.rule)
    _x_axis(c, x0 + gutter, y0 + h - 1, cols, m.x_range, theme)


def _y_marks(lo: float, hi: float, rows: int) -> List[Tuple[int, str]]:
    """(plot row, label) at the top dot of the top row, the bottom dot of the bottom row
    and, on taller charts, the top dot of the middle row: each label is the value of the
    dot row it stands beside."""
    px_h = rows * 4
    marks = [(0, fmt_axis(hi))]
    if rows >= 5:
        mid = rows // 2
        marks.append((mid, fmt_axis(hi - (4 * mid) / (px_h - 1) * (hi - lo))))
    if rows >= 2:
        marks.append((rows - 1, fmt_axis(lo)))
    return marks


def _title(c: Canvas, x0: int, y0: int, w: int, m: ChartModel, weight: float, theme) -> None:
    put(c, x0 + 1, y0, truncate(m.series.title, max(w - 2, 0)), theme.title)
    figs = []
    if m.main.values:
        figs.append((fmt_axis(m.main.values[-1]), theme.value))
        if weight:
            figs.append((f"ema {fmt_axis(m.shown[-1])}", theme.label))
    else:
        figs.append(("n/a", theme.na))
    if m.other is not None:
        figs.append((f"vs {fmt_axis(m.other.values[-1])}", theme.chart_other))
    text_w = sum(text_width(t) + 1 for t, _ in figs)
    x = x0 + w - text_w
    if x <= x0 + text_width(m.series.title) + 2:
        figs, x = figs[:1], x0 + w - text_width(figs[0][0]) - 1
    if x <= x0 + text_width(m.series.title) + 2:
        return
    for text, style in figs:
        x = put(c, x, y0, text, style) + 1


def _x_axis(c: Canvas, x: int, y: int, cols: int, x_range, theme) -> None:
    put(c, x, y, "└" + "─" * cols, theme.rule)
    s0, s1 = x_range
    first = f" {fmt_int(s0)} "
    put(c, x + 1, y, first, theme.label)
    if s1 != s0:
        last = f" step {fmt_int(s1)} "
        if text_width(first) + text_width(last) + 2 <= cols:
            put(c, x + cols + 1 - text_width(last), y, last, theme.label)
