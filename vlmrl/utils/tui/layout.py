"""Compose the panels into one screen for any terminal size, without scrolling.

The dashboard is a header, a body of 1-3 columns of stacked panels and a footer. Each
panel gets at least its minimum rows (title plus its key values), then its preferred
rows, then spare rows go round-robin to the panels that can use more (heatmap layers,
recent tokens, credit list, cache bars). When even the minimums do not fit, the least
essential panels are dropped. Panel canvases are kept on their `cache_key` in the
dashboard's RenderCache, so a frame where nothing a panel reads changed reuses it; a
frame where nothing changed at all returns the previous screen object (callers treat
screens as read-only).
"""
from __future__ import annotations

import functools
import importlib
from types import MappingProxyType
from typing import List, Optional, Tuple

from vlmrl.utils.tui.canvas import Canvas, Rect, text_width
from vlmrl.utils.tui.palette import COLOR, RAMP
from vlmrl.utils.tui.store import HEAT_HZ
from vlmrl.utils.tui.panels import attention, credit, decode, flow, footer, header, kvcache, mrope, vision
from vlmrl.utils.tui.panels.common import remember
from vlmrl.utils.tui.render_cache import RenderCache
from vlmrl.utils.tui.view import KEY_HELP, REPLAY_KEY_HELP

MIN_WIDTH, MIN_HEIGHT = 40, 10
PANELS = MappingProxyType({
    "header": header, "footer": footer, "decode": decode, "flow": flow, "attention": attention,
    "vision": vision, "mrope": mrope, "credit": credit, "kv": kvcache,
})
# Dropped first when the minimums do not fit.
DROP_ORDER = ("mrope", "vision", "credit", "kv", "flow", "attention", "decode")
COLUMNS = MappingProxyType({
    1: (("decode", "attention", "flow", "kv", "credit", "vision", "mrope"),),
    2: (("decode", "flow", "attention"), ("vision", "mrope", "credit", "kv")),
    3: (("decode", "flow"), ("attention", "vision", "mrope"), ("credit", "kv")),
})


def _sizes(name: str, num_layers: int, display_layers: int, credit_rows: int = 16) -> Tuple[int, int, int]:
    """(min, preferred, max) rows of a body panel."""
    return {
        "decode": (3, 4, 3 + 60),
        "flow": (3, 4, 4),
        "attention": (2, display_layers + 2, num_layers + 2),
        "vision": (2, 4, 4),
        "mrope": (1, 2, 2),
        "credit": (2, 6, 1 + credit_rows),
        "kv": (3, 3 + display_layers, 3 + max(display_layers, 8)),
    }[name]


def _stack(names, avail: int, num_layers: int, display_layers: int, credit_rows: int) -> List[Tuple[str, int]]:
    names = list(names)
    sizes = {n: _sizes(n, num_layers, display_layers, credit_rows) for n in names}
    for victim in DROP_ORDER:
        if sum(sizes[n][0] for n in names) <= avail:
            break
        if victim in names:
            names.remove(victim)
    if sum(sizes[n][0] for n in names) > avail:
        return []
    h = {n: sizes[n][0] for n in names}
    spare = avail - sum(h.values())
    for n in names:  # preferred heights, in order of importance
        add = min(spare, sizes[n][1] - h[n])
        h[n] += add
        spare -= add
    growing = True
    while spare > 0 and growing:  # round-robin the rest to panels that can use it
        growing = False
        for n in names:
            if spare > 0 and h[n] < sizes[n][2]:
                h[n] += 1
                spare -= 1
                growing = True
    return [(n, h[n]) for n in names]


@functools.lru_cache(maxsize=64)
def plan(width: int, height: int, num_layers: int = 28, display_layers: int = 6,
         credit_rows: int = 16) -> Tuple[Tuple[str, Rect], ...]:
    """Panel rectangles for a dashboard of width x height (empty below the minimum size).

    `credit_rows` caps the credit list at the tokens there are, so spare rows go below the
    last panel of the column instead of into a gap (it changes once per update, not per token).
    """
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return ()
    head_h = 2 if height >= 16 else 1
    body_y, body_h = head_h, height - head_h - 1
    ncols = 1 if width < 60 else (2 if width < 150 else 3)
    out = [("header", Rect(0, 0, width, head_h)), ("footer", Rect(0, height - 1, width, 1))]
    col_w = (width - (ncols - 1)) // ncols
    x = 0
    for i, names in enumerate(COLUMNS[ncols]):
        w = col_w if i < ncols - 1 else width - x
        y = body_y
        for name, h in _stack(names, body_h, num_layers, display_layers, credit_rows):
            out.append((name, Rect(x, y, w, h)))
            y += h
        x += w + 1
    return tuple(out)


def render_screen(state, view, width: int, height: int, now: float, theme=COLOR, meta=None,
                  cache: Optional[RenderCache] = None) -> Canvas:
    """One full screen of exactly width x height cells.

    Args:
      state: DashboardState from `Store.snapshot()`.
      view: ViewState.
      width, height: terminal size in cells.
      now: monotonic seconds (the Store's clock); drives flashing and uptime.
      theme: a palette.Palette (colour off under NO_COLOR).
      meta: live-loop figures {"dropped", "fps", "frame_ms", "error", "source"} or None.
      cache: the dashboard's RenderCache (what it keeps between frames); None draws cold.
    Returns:
      a Canvas; treat it as read-only (an unchanged frame returns the same object).
    """
    state = state.with_meta(meta)
    cache = RenderCache() if cache is None else cache
    width, height = max(0, int(width)), max(0, int(height))
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return _too_small(width, height, theme)
    if view.mode != "dashboard":
        screen = _mode_screen(state, view, width, height, now, theme, cache)
    else:
        screen = _dashboard(state, view, width, height, now, theme, cache)
    if view.show_help:
        screen = screen.copy()
        _help_overlay(screen, theme, str(state.meta.get("source") or "LIVE"))
    return screen


def plan_for(state, view, width: int, height: int) -> Tuple[Tuple[str, Rect], ...]:
    """The panel rectangles `render_screen` uses for this state and view."""
    num_layers = state.num_layers() or 28
    n_credit = len(state.credit.tokens) if state.credit is not None else 0
    return plan(width, height, num_layers, view.display_layers, max(4, min(16, n_credit)))


def _dashboard(state, view, width, height, now, theme, cache: RenderCache) -> Canvas:
    rects = plan_for(state, view, width, height)
    keys = []
    canvases = []
    for name, rect in rects:
        mod = PANELS[name]
        key = (rect, id(theme), state.store_id, mod.cache_key(state, view, now))
        hit = cache.panels.get(name)
        if hit is not None and hit[0] == key:
            canvas = hit[1]
        else:
            canvas = mod.render(state, view, rect.width, rect.height, now, theme, cache)
            cache.panels[name] = (key, canvas)
        keys.append(key)
        canvases.append((rect, canvas))
    frame_key = (width, height, id(theme), tuple(keys))
    if cache.screen is not None and cache.screen[0] == frame_key:
        return cache.screen[1]
    recipes = cache.memo("layout.recipes")
    recipe = recipes.get((rects, width, height, theme))
    if recipe is None:
        recipe = remember(recipes, (rects, width, height, theme), _recipe(rects, width, height, theme), 64)
    panels = [c for _, c in canvases]
    last = cache.last
    reuse = None
    if last is not None and last[0] is recipe:
        reuse = (last[2], last[1])
    screen = _assemble(recipe, panels, width, height, reuse, [r for r, _ in canvases])
    cache.screen = (frame_key, screen)
    cache.last = (recipe, panels, screen)
    return screen


def _recipe(rects, width: int, height: int, theme):
    """Per screen row, left to right: (panel index, panel row, None) pieces and (None,
    chars, styles) literals (the rule between body columns, blank gaps). Built once per
    plan and kept in the RenderCache: the previous screen is reused only when its recipe
    is the very same object."""
    names = dict(rects)
    top = names["header"].bottom if "header" in names else 0
    bottom = names["footer"].y if "footer" in names else height
    seps = sorted({r.x - 1 for n, r in rects if n not in ("header", "footer") and r.x > 0})
    rule = (None, ("│",), (theme.rule,))
    rows = []
    for y in range(height):
        pieces = [(r.x, r.width, (i, y - r.y, None)) for i, (n, r) in enumerate(rects) if r.y <= y < r.bottom]
        if top <= y < bottom:
            pieces += [(x, 1, rule) for x in seps]
        out, x = [], 0
        for px, w, item in sorted(pieces, key=lambda p: p[0]):
            if px > x:
                out.append((None, (" ",) * (px - x), (theme.plain,) * (px - x)))
            out.append(item)
            x = px + w
        if x < width:
            out.append((None, (" ",) * (width - x), (theme.plain,) * (width - x)))
        rows.append(tuple(out))
    return tuple(rows)


def _assemble(recipe, canvases, width: int, height: int, reuse=None, rects=None) -> Canvas:
    """The screen built row by row from the panels' row lists (list extends in C, no
    per-cell work). Panels are separate canvases, so no wide char straddles a seam.

    `reuse` is (previous screen of the same recipe, its panel canvases) and `rects` the
    panels' rectangles: only screen rows holding a panel row that differs (a new canvas
    whose row lists are not equal: compared in C) are rebuilt; every other row is the
    previous screen's row list itself (screens are read-only), which also lets the frame
    diff skip it at identity speed. The new screen's `damage` names those panel spans, so
    the diff scans only them."""
    spans = None
    if reuse is not None:
        prev, old = reuse
        spans = {}
        for a, (new_c, old_c) in enumerate(zip(canvases, old)):
            if new_c is old_c:
                continue
            r = rects[a]
            span = (r.x, r.x + r.width)
            for b, (nc, oc, ns, os_) in enumerate(zip(new_c.chars, old_c.chars, new_c.styles, old_c.styles)):
                if (nc is not oc and nc != oc) or (ns is not os_ and ns != os_):
                    spans.setdefault(r.y + b, []).append(span)
        chars, styles = list(prev.chars), list(prev.styles)
        rows = sorted(spans)
        prev.damage = None  # superseded: never chain screens back in time
    else:
        chars, styles = [None] * height, [None] * height
        rows = range(height)
    cchars = [c.chars for c in canvases]
    cstyles = [c.styles for c in canvases]
    for y in rows:
        ch, st = [], []
        for a, b, lit_styles in recipe[y]:
            if a is None:
                ch += b
                st += lit_styles
            else:
                ch += cchars[a][b]
                st += cstyles[a][b]
        chars[y] = ch
        styles[y] = st
    screen = Canvas.__new__(Canvas)
    screen.width, screen.height = width, height
    screen.chars, screen.styles = chars, styles
    screen.damage = None if spans is None else (prev, spans)
    return screen


def _mode_screen(state, view, width, height, now, theme, cache: RenderCache) -> Canvas:
    """REPLAY's matrix / explorer panel over the body, with our footer below it."""
    screen = Canvas(width, height)
    try:
        mod = importlib.import_module(f"vlmrl.utils.tui.panels.{view.mode}")
    except ImportError:
        mod = None
    render = getattr(mod, "render", None)
    if render is None:
        screen.put(2, height // 2, f"{view.mode} view not available in this build · press {view.mode[0]} to go back",
                   theme.na, max_width=width - 4)
    else:
        body = render(state, view, width, height - 1, now, theme, cache)
        screen.blit(body, 0, 0)
    screen.blit(footer.render(state, view, width, 1, now, theme, cache), 0, height - 1)
    return screen


def _too_small(width: int, height: int, theme) -> Canvas:
    c = Canvas(width, height)
    msg = f"terminal {width}x{height} too small: need {MIN_WIDTH}x{MIN_HEIGHT}"
    for i, part in enumerate(("vlmrl", msg)):
        y = height // 2 - 1 + i
        c.put(max(0, (width - text_width(part)) // 2), y, part, theme.warn if i == 0 else theme.plain)
    return c


def help_lines(source: str = "LIVE") -> List[str]:
    """The help overlay's lines for a dashboard showing `source` (the footer's source:
    LIVE, SYNTHETIC, ATTACH or a REPLAY status)."""
    replay, attach = source.startswith("REPLAY"), source.startswith("ATTACH")
    lines = [f"{k:<8} {what}" for k, what in KEY_HELP]
    if replay:
        lines += ["replay:"] + [f"{k:<8} {what}" for k, what in REPLAY_KEY_HELP]
    if replay:
        lines.append("q leaves the replay. Stuck terminal: type reset")
    elif attach:
        lines.append("q stops following the log. Stuck terminal: type reset")
    else:
        lines.append("q leaves the dashboard; the run goes on. Stuck terminal: type reset")
    lines += [
        "",
        f"heatmap  {RAMP[0]}<.25 {RAMP[1]}<.5 {RAMP[2]}<.75 {RAMP[3]}≥.75 (flashes), · not measured",
        f"heatmap  refreshed {HEAT_HZ:g}x/s with the newest step; █ cells flash",
        "focus    1 - H(row)/log K of the newest query row",
        "max      largest attention weight   vision  share on image tokens",
        "sink     share on the first token   n/a     not measured",
        "H        entropy of the next-token distribution (nats)",
        "T-slot   mRoPE position minus cache slot (images compress positions)",
        "pages    the contiguous KV cache counted in 16-token pages (used/allocated); slots used/max",
    ]
    return lines


def _help_overlay(screen: Canvas, theme, source: str) -> None:
    lines = help_lines(source)
    w = min(screen.width - 2, max(text_width(s) for s in lines) + 4)
    h = min(screen.height - 2, len(lines) + 2)
    x0 = (screen.width - w) // 2
    y0 = (screen.height - h) // 2
    screen.fill(Rect(x0, y0, w, h), " ", theme.help)
    screen.put(x0, y0, "┌" + "─" * (w - 2) + "┐", theme.help)
    screen.put(x0 + 2, y0, " HELP (? to close) ", theme.title)
    for i, line in enumerate(lines[: h - 2]):
        screen.put(x0, y0 + 1 + i, "│", theme.help)
        screen.put(x0 + 2, y0 + 1 + i, line, theme.help, max_width=w - 4)
        screen.put(x0 + w - 1, y0 + 1 + i, "│", theme.help)
    screen.put(x0, y0 + h - 1, "└" + "─" * (w - 2) + "┘", theme.help)
