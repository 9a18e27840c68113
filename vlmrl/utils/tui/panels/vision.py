"""VISION INJECTION @ Token[k]: where the image tokens sit, their grid, the DeepStack
layers, and per layer how much of the newest token's attention lands on them."""
from __future__ import annotations

import numpy as np

from vlmrl.utils.tui.canvas import Canvas
from vlmrl.utils.tui.panels.attention import GLYPHS, levels
from vlmrl.utils.tui.panels.common import NA, put, put_glyphs, put_pairs, open_panel, title_rule
from vlmrl.utils.tui.render_cache import RenderCache

TITLE = "VISION INJECTION"


def cache_key(state, view, now):
    b = view.batch_index % state.batch_size()
    d = state.decode_for(b)
    # the lines read only the image placement (fixed for a generation) and the shares
    # (the throttled heatmap stats), so a new token alone does not redraw the panel
    span = None if d is None else (_ints(d.vision_span), _ints(d.vision_grid))
    return (span, d is None, state.heat_version(b), state.run_v, b)


def _ints(v):
    """A comparable form of a vision span / grid (a tuple already is: the usual case)."""
    return v if v is None or type(v) is tuple else tuple(int(i) for i in v)


def merged_grid(grid, tokens) -> str:
    """The merged grid t×h×w (one image token a cell, the words the image view uses) of a
    patch grid whose image holds `tokens` tokens: h and w divided by the merge side m, where
    m² = patches / tokens; just the token count when that does not divide evenly."""
    if tokens is None:
        return NA
    if grid is None or tokens <= 0:
        return f"{tokens} tokens"
    t, h, w = (int(g) for g in grid)
    m = int(round((t * h * w / tokens) ** 0.5))
    if m < 1 or h % m or w % m or t * (h // m) * (w // m) != tokens:
        return f"{tokens} tokens"
    return f"{t}×{h // m}×{w // m}"


def layer_shares(state, batch_index: int):
    """Mean over heads of the vision-share stat per layer (NaN where unmeasured), or None;
    from the stats the heatmap shows (`state.heat`), so both agree."""
    arr = state.heat.get(batch_index, {}).get("vision")
    if arr is None or arr.shape[1] == 0:
        return None
    sums = arr.sum(axis=1)
    # NaN in arr makes its layer's sum NaN: checking the L sums, not the L x H cells, finds
    # the common case (nothing unmeasured) without the NaN bookkeeping
    if not np.isnan(sums).any():
        return sums / arr.shape[1]
    nan = np.isnan(arr)
    if not nan.any():  # NaN from inf - inf, not from unmeasured heads
        return sums / arr.shape[1]
    counts = (~nan).sum(axis=1)
    return np.where(counts > 0, np.nansum(arr, axis=1) / np.maximum(counts, 1), np.nan)


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    c, b, d = open_panel(state, view, width, height)
    if width <= 0 or height <= 0:
        return c
    span = None if d is None else d.vision_span
    if span is None:
        right = "n/a" if d is None else "text only"
        title_rule(cache, c, 0, f"{TITLE} @ Token[{NA}]", theme, right=right, right_style=theme.na)
    else:
        title_rule(cache, c, 0, f"{TITLE} @ Token[{int(span[0])}]", theme, right=f"{int(span[1]) - int(span[0])} image tokens")
    y = 1
    if y < height:
        grid = None if d is None else d.vision_grid
        grid_s = NA if grid is None else "×".join(str(int(g)) for g in grid)
        span_s = NA if span is None else f"{int(span[0])}..{int(span[1]) - 1}"
        tokens = None if span is None else int(span[1]) - int(span[0])
        # the grids first (the image view names the merged grid alike); the span (its start
        # is in the title) is what a narrow panel leaves out
        put_pairs(cache, c, 1, y, [("patch grid", grid_s), ("merged grid", merged_grid(grid, tokens)),
                                   ("span", span_s)], theme)
        y += 1
    if y < height:
        run = state.run
        if run is None:
            ds = NA
        elif run.deepstack_layers:
            ds = " ".join(f"L{int(i)}" for i in run.deepstack_layers)
        else:
            ds = "none"
        put_pairs(cache, c, 1, y, [("DeepStack →", ds)], theme)
        y += 1
    if y < height:
        _shares(c, y, state, b, theme)
    return c


def _shares(c: Canvas, y: int, state, b: int, theme) -> None:
    x = put(c, 1, y, "share/layer ", theme.label)
    shares = layer_shares(state, b)
    if shares is None:
        put(c, x, y, NA, theme.na)
        return
    lv = levels(shares).tolist()  # 4: not measured (NaN)
    by_level = (theme.vision,) * 4 + (theme.na,)
    x = put_glyphs(c, x, y, "".join(map(GLYPHS.__getitem__, lv)), list(map(by_level.__getitem__, lv)))
    values = shares.tolist()
    finite = [v for v in values if v == v]
    if finite:
        v = max(finite)
        top = values.index(v)  # the first layer holding the largest share
        text = f"max {v:.2f}@L{top}"
        if x + 1 + len(text) <= c.width:
            put(c, x + 1, y, text, theme.value)
