"""Update view (key u): what each PPO update did to each layer, head and vision block.

From the update taps' UpdateStats: a layer x head heatmap of ||Δw||/||w|| on a log scale
(the ░▒▓█ ramp over the decades this update spans; `0` a row that did not move, `·` one
with no weight), each layer's MLP and whole-layer ratio beside its row, the vision
blocks, mergers and the rest in a column on the right, a chart of the selected layer's
ratio over the updates held, and a line naming the rows that jumped 10x since the
previous update or fell to ~0. ↑/↓ select a layer (the heatmap shows its page), [ / ]
page through the layers. Pure: everything drawn is read from the snapshot and the view.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Tuple

import numpy as np

from vlmrl.instrument.events import UPDATE_OTHER_ROWS
from vlmrl.utils.tui.canvas import Canvas, text_width
from vlmrl.utils.tui.palette import NOT_MEASURED, RAMP
from vlmrl.utils.tui.panels.attention import page_bounds
from vlmrl.utils.tui.update_math import (NAN, ZERO, alerts, decade_range, fmt_ratio, level_edges, log_levels,
                                         merger_name)

TITLE = "UPDATES"
GLYPHS = tuple(RAMP) + ("0", NOT_MEASURED)  # by log_levels: 0..3 ramp, ZERO, NAN
BARS = " ▁▂▃▄▅▆▇█"
KEYS = "↑↓ layer · [ ] page · u back"


@dataclasses.dataclass(frozen=True)
class UpdatesView:
    layer: Optional[int] = None  # the selected text layer (its chart); None: the deepest
    # Pages away from the selected layer's own page (wrapping), as `[` / `]` browse; ↑/↓
    # bring the heatmap back to the selection.
    page_shift: int = 0


def get_view(view) -> UpdatesView:
    uv = (getattr(view, "mode_state", None) or {}).get("updates")
    return uv if isinstance(uv, UpdatesView) else UpdatesView()


def _layers(state) -> int:
    ups = getattr(state, "updates", ()) if state is not None else ()
    if ups and ups[-1].layer_ratio is not None:
        return len(ups[-1].layer_ratio)
    return (state.num_layers() or 1) if state is not None else 1


def selected(view, state) -> int:
    n = _layers(state)
    layer = get_view(view).layer
    return n - 1 if layer is None else min(max(layer, 0), n - 1)


def handle_key(view, key: str, state=None, cache=None):
    """↑/↓ (k/j) move the selected layer, Home/End the first/last; [ / ] page the heatmap
    (page 0 holds the deepest layers, as in the attention view; it wraps)."""
    n, uv = _layers(state), get_view(view)
    moves = {"KEY_UP": -1, "up": -1, "k": -1, "KEY_DOWN": 1, "down": 1, "j": 1}
    if key in ("KEY_HOME", "home"):
        uv = UpdatesView(layer=0)
    elif key in ("KEY_END", "end"):
        uv = UpdatesView(layer=n - 1)
    elif key in moves:
        uv = UpdatesView(layer=min(max(selected(view, state) + moves[key], 0), n - 1))
    elif key in ("[", "KEY_PGUP", "KEY_PPAGE"):
        uv = dataclasses.replace(uv, page_shift=uv.page_shift + 1)
    elif key in ("]", "KEY_PGDOWN", "KEY_NPAGE"):
        uv = dataclasses.replace(uv, page_shift=uv.page_shift - 1)
    else:
        return view
    st = dict(getattr(view, "mode_state", None) or {})
    st["updates"] = uv
    return view.replace(mode_state=st)


def cache_key(state, view, now):
    return (state.update_v, get_view(view))


def _geometry(height: int) -> Tuple[int, int]:
    """(heatmap rows, chart rows) for a view of `height` rows: title, figures, column
    heads, the heatmap, legend, chart title, the chart, alerts, keys."""
    chart = min(8, max(1, (height - 8) // 3))
    return max(1, height - 7 - chart), chart


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    """The whole view; `cache` is accepted for the panel contract and not needed here."""
    c = Canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    ups = state.updates
    if not ups or ups[-1].head_ratio is None or ups[-1].layer_ratio is None:
        _rule(c, 0, f"{TITLE} · ‖Δw‖/‖w‖", "n/a", theme)
        c.put(2, 1, "no update statistics yet: they arrive once per PPO update when the run's taps are on",
              theme.na, max_width=width - 4)
        c.put(2, min(2, height - 1), KEYS, theme.dim, max_width=width - 4)
        return c
    cur = ups[-1]
    prev = ups[-2] if len(ups) > 1 else None
    L, H = cur.head_ratio.shape
    sel = min(selected(view, state), L - 1)
    avail, chart_rows = _geometry(height)
    side_w = 30 if width >= 80 else 0  # the VISION column, right of the heatmap when it fits
    # the layer region: every layer that fits, and tall enough for the VISION column's lines
    # (a model with few layers still shows each merger)
    rows = min(avail, L)
    region = min(avail, max(rows, _side_lines(cur) if side_w else 0))
    chart_rows = min(16, chart_rows + avail - region)  # rows a short layer region leaves go to the chart
    page = (L - 1 - sel) // rows + get_view(view).page_shift
    lo, hi, page, pages = page_bounds(L, rows, page)
    hi = max(hi, min(L, lo + rows))  # the earliest page is a full one, overlapping the next
    span = decade_range([cur.head_ratio, cur.mlp_ratio, cur.layer_ratio, cur.vision_ratio, cur.merger_ratio,
                         cur.other_ratio]) or (-3.0, -2.0)
    exploding, dead = alerts(prev, cur)
    flagged = {n for n, _ in exploding} | set(dead)
    pg = f" · pg {page + 1}/{pages}" if pages > 1 else ""
    _rule(c, 0, f"{TITLE} · ‖Δw‖/‖w‖ per head (log)", f"step {cur.step} · L{lo}-{hi - 1}/{L}{pg}", theme)
    x = c.put(1, 1, "grad ", theme.label)
    x = c.put(x, 1, f"{cur.grad_norm:.3f}", theme.value)
    x = c.put(x, 1, f" before clipping (max {cur.grad_norm_max:.3f}) · clip ", theme.label)
    x = c.put(x, 1, f"×{cur.clip_factor:.3f}", theme.warn if cur.clip_factor < 1.0 else theme.value)
    c.put(x, 1, f" · {cur.optimizer_steps} optimizer step{'s' if cur.optimizer_steps != 1 else ''}", theme.label)
    end = _heatmap(c, cur, lo, hi, sel, span, flagged, width - side_w, theme)
    if side_w:
        _side(c, cur, span, flagged, min(width - side_w, end + 2) + 2, 2, side_w - 2, region + 1, theme)
    y = 3 + region
    _legend(c, y, span, theme)
    _chart(c, ups, sel, y + 1, chart_rows, theme)
    _alerts(c, y + 2 + chart_rows, exploding, dead, prev, theme)
    if height - 1 > y + 2 + chart_rows:  # a very short screen keeps the alerts, not the key help
        c.put(1, height - 1, KEYS, theme.dim, max_width=width - 2)
    return c


def _rule(c: Canvas, y: int, title: str, right: str, theme) -> None:
    if y >= c.height:
        return
    c.put(0, y, "━" * c.width, theme.rule)
    x = c.put(1, y, f" {title} ", theme.title)
    rx = c.width - text_width(right) - 3
    if right and rx > x:
        c.put(rx, y, f" {right} ", theme.value)


def _cell(c: Canvas, x: int, y: int, value, span, theme) -> int:
    lv = int(log_levels(np.asarray([value], np.float64), span)[0])
    return c.put(x, y, GLYPHS[lv], _style(lv, theme))


def _style(lv: int, theme):
    return theme.bad if lv == ZERO else (theme.na if lv == NAN else theme.heat[lv])


def _heatmap(c: Canvas, cur, lo: int, hi: int, sel: int, span, flagged, width: int, theme) -> int:
    """The layer rows lo..hi-1; returns the column after the widest of them."""
    L, H = cur.head_ratio.shape
    label_w = len(f"L{L - 1}") + 2
    beside = 22  # "  ▓ 1.2e-3  ▓ 1.2e-3"
    heads_fit = max(0, min(H, width - label_w - beside - 2))
    tail = f"+{H - heads_fit}" if heads_fit < H else ""
    x_mlp = label_w + heads_fit + len(tail) + 2
    head_label = f"heads 0-{H - 1}"
    c.put(label_w, 2, head_label if len(head_label) <= heads_fit + len(tail) else "heads", theme.dim)
    c.put(x_mlp, 2, "MLP", theme.dim)
    c.put(x_mlp + 11, 2, "layer", theme.dim)
    head_lv = log_levels(cur.head_ratio[lo:hi, :heads_fit], span)
    for i, layer in enumerate(range(lo, hi)):
        y = 3 + i
        name = f"L{layer}"
        mark = "▶" if layer == sel else " "
        style = theme.alert if name in flagged else (theme.value if layer == sel else theme.label)
        c.put(0, y, mark, theme.value)
        c.put(1, y, name.rjust(label_w - 2), style)
        x = label_w
        for lv in head_lv[i].tolist():
            x = c.put(x, y, GLYPHS[lv], _style(lv, theme))
        c.put(x, y, tail, theme.dim)
        for k, arr in enumerate((cur.mlp_ratio, cur.layer_ratio)):
            xx = x_mlp + 11 * k
            if arr is None or layer >= len(arr):
                c.put(xx, y, "n/a", theme.na)
                continue
            _cell(c, xx, y, arr[layer], span, theme)
            c.put(xx + 2, y, fmt_ratio(arr[layer]), theme.value if layer == sel else theme.label)
    return x_mlp + 20


def _side_lines(cur) -> int:
    """Lines the VISION column would fill: title, strip, extremes, mergers, other rows."""
    return 3 + sum(len(a) for a in (cur.merger_ratio, cur.other_ratio) if a is not None)


def _side(c: Canvas, cur, span, flagged, x0: int, y0: int, width: int, height: int, theme) -> None:
    """VISION: the blocks as a strip (one cell each) with their extremes, then each merger
    and the rows outside the layers, one line each."""
    for y in range(y0, y0 + height):
        c.put(x0 - 2, y, "│", theme.rule)
    lines: List[Tuple[str, Optional[float]]] = []
    y = y0
    c.put(x0, y, "VISION", theme.title)
    y += 1
    vis = cur.vision_ratio
    if vis is not None and len(vis):
        x = c.put(x0, y, f"V0-{len(vis) - 1} ", theme.label)
        strip = log_levels(vis[:max(0, width - (x - x0))], span).tolist()
        for lv in strip:
            x = c.put(x, y, GLYPHS[lv], _style(lv, theme))
        y += 1
        finite = [(float(v), i) for i, v in enumerate(vis) if math.isfinite(float(v))]
        if finite:
            (mn, imn), (mx, imx) = min(finite), max(finite)
            c.put(x0, y, f"lo V{imn} {fmt_ratio(mn)} hi V{imx} {fmt_ratio(mx)}", theme.label, max_width=width)
            y += 1
    if cur.merger_ratio is not None:
        lines += [(merger_name(i), float(v)) for i, v in enumerate(cur.merger_ratio)]
    if cur.other_ratio is not None:
        lines += [(UPDATE_OTHER_ROWS[i] if i < len(UPDATE_OTHER_ROWS) else f"row {i}", float(v))
                  for i, v in enumerate(cur.other_ratio)]
    for name, v in lines:
        if y >= y0 + height:
            break
        c.put(x0, y, name[:9].ljust(10), theme.alert if name in flagged else theme.label)
        _cell(c, x0 + 10, y, v, span, theme)
        c.put(x0 + 12, y, fmt_ratio(v), theme.label)
        y += 1


def _legend(c: Canvas, y: int, span, theme) -> None:
    edges = [fmt_ratio(e) for e in level_edges(span)]
    text = (f"{RAMP[0]}<{edges[0]} {RAMP[1]}<{edges[1]} {RAMP[2]}<{edges[2]} {RAMP[3]}≥ (log)  "
            f"0 no change  {NOT_MEASURED} no weight")
    c.put(1, y, text, theme.dim, max_width=c.width - 2)


def _chart(c: Canvas, ups, sel: int, y: int, rows: int, theme) -> None:
    """The selected layer's ratio over the updates held: one column per update, newest
    right, bar heights log-scaled over the decades they span (eighths of a cell)."""
    gutter = 9
    cols = max(0, c.width - gutter - 1)
    pts = [(u.step, float(u.layer_ratio[sel]) if u.layer_ratio is not None and sel < len(u.layer_ratio) else math.nan)
           for u in ups][-cols:] if cols else []
    steps = f"steps {pts[0][0]}-{pts[-1][0]}" if pts else ""
    _rule(c, y, f"L{sel} ‖Δw‖/‖w‖ over updates (log)", steps, theme)
    vals = np.asarray([v for _, v in pts], np.float64)
    span = decade_range([vals])
    if span is None or rows <= 0:
        c.put(2, y + 1, "n/a (no update moved this layer yet)", theme.na)
        return
    lo, hi = span
    c.put(0, y + 1, fmt_ratio(10 ** hi).rjust(gutter - 1), theme.label)
    c.put(0, y + rows, fmt_ratio(10 ** lo).rjust(gutter - 1), theme.label)
    for j, v in enumerate(vals.tolist()):
        x = gutter + j
        if math.isnan(v):
            c.put(x, y + rows, NOT_MEASURED, theme.na)
            continue
        if v <= 0:
            c.put(x, y + rows, "0", theme.bad)
            continue
        eighths = max(1, min(rows * 8, round((math.log10(v) - lo) / (hi - lo) * rows * 8)))
        for r in range(rows):
            fill = min(8, max(0, eighths - 8 * r))
            if fill:
                c.put(x, y + rows - r, BARS[fill], theme.heat[min(3, r * 4 // rows)])


def _alerts(c: Canvas, y: int, exploding, dead, prev, theme) -> None:
    if not exploding and not dead:
        since = f" since step {prev.step}" if prev is not None else ""
        c.put(1, y, f"no layer jumped 10× or fell to ~0{since}", theme.good, max_width=c.width - 2)
        return
    x = 1
    if exploding:
        x = c.put(x, y, "exploding ", theme.alert)
        x = c.put(x, y, " ".join(f"{n} ×{f:.0f}" for n, f in exploding) + "  ", theme.warn, max_width=c.width - x - 1)
    if dead and x < c.width - 8:
        x = c.put(x, y, "dead ", theme.alert)
        c.put(x, y, " ".join(dead) + " (~0: no change)", theme.warn, max_width=c.width - x - 1)
