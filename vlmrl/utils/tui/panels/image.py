"""Image view (key v): the watched sample's image with the current token's attention on it.

From the image taps: the image as the model saw it (ImageState), drawn with half-block
cells (`▀`: foreground the upper pixel, background the lower) at whatever colour depth the
terminal has (the frame encoder lowers RGB), and the attention the token's query gave each
merged patch (ImageAttention: mean over heads, of one layer or of all layers) blended over
it as heat, with its scale, the share of the token's attention on the image, and that
share's curve over generations. Without colour (NO_COLOR) the image is a grey glyph ramp
and the overlay the ░▒▓█ ramp beside it (when it fits), no colour codes. Several images: side by side when they
fit, else paged. Pure: drawn from the snapshot and the view; the canvas is kept in the
RenderCache until what it shows changes.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from vlmrl.utils.tui import image_math as im
from vlmrl.utils.tui.canvas import Canvas, Style
from vlmrl.utils.tui.palette import RAMP, ramp_glyph, sparkline
from vlmrl.utils.tui.panels.common import fmt_num, message, put, remember, title_rule
from vlmrl.utils.tui.state import HEAT_HZ

TITLE = "IMAGE"
KEYS = "[ ] layer · a all layers · ↑↓ token · o overlay · n next image · v back"
HALF = "▀"
MIN_COLS = 16  # narrowest image slot side by side


@dataclasses.dataclass(frozen=True)
class ImageView:
    layer: Optional[int] = None  # None: the mean over all layers
    step: Optional[int] = None  # the token (decode step) shown; None: the newest
    overlay: bool = True
    page: int = 0  # first image shown when not all fit side by side


def get_view(view) -> ImageView:
    iv = (getattr(view, "mode_state", None) or {}).get("image")
    return iv if isinstance(iv, ImageView) else ImageView()


def _layers(state) -> int:
    snap = getattr(state, "images", None)
    if snap is not None and snap.steps:
        return int(snap.steps[-1].attention.shape[0])
    return (state.num_layers() or 1) if state is not None else 1


def _current(snap, iv: ImageView):
    """The ImageAttention shown: the chosen step's (or the nearest before it), else the newest."""
    if snap is None or not snap.steps:
        return None
    if iv.step is None:
        return snap.steps[-1]
    older = [s for s in snap.steps if s.step <= iv.step]
    return older[-1] if older else snap.steps[0]


def handle_key(view, key: str, state=None, cache=None):
    """[ / ] previous / next layer (through "all layers"), a all layers, ↑/↓ an earlier /
    later token of the generation, o overlay on/off, n next page of images. No vim k/j: k
    opens the memory plan here as from the other RL views (view.SHARED_KEY_MODES)."""
    iv, n = get_view(view), _layers(state)
    snap = getattr(state, "images", None) if state is not None else None
    steps = [s.step for s in snap.steps] if snap is not None else []
    order = [None] + list(range(n))  # all layers, then each layer
    pos = order.index(iv.layer) if iv.layer in order else 0
    if key == "]":
        iv = dataclasses.replace(iv, layer=order[(pos + 1) % len(order)])
    elif key == "[":
        iv = dataclasses.replace(iv, layer=order[(pos - 1) % len(order)])
    elif key == "a":
        iv = dataclasses.replace(iv, layer=None)
    elif key in ("KEY_UP", "up", "KEY_DOWN", "down") and steps:
        cur = _current(snap, iv).step
        i = steps.index(cur) + (-1 if key in ("KEY_UP", "up") else 1)
        iv = dataclasses.replace(iv, step=None if i >= len(steps) - 1 else steps[max(i, 0)])
    elif key == "o":
        iv = dataclasses.replace(iv, overlay=not iv.overlay)
    elif key == "n":
        iv = dataclasses.replace(iv, page=iv.page + 1)
    else:
        return view
    st = dict(getattr(view, "mode_state", None) or {})
    st["image"] = iv
    return view.replace(mode_state=st)


def cache_key(state, view, now):
    snap = state.images
    return (None if snap is None else snap.version, get_view(view))


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    """The whole view. With a RenderCache, a screen is redrawn when what it shows changed,
    at most HEAT_HZ times a second (as the heatmap): a step's new heat changes most image
    cells, and drawing them at every emit cost the render thread ~50 ms a frame at 240x70."""
    iv = get_view(view)
    if cache is None:
        return _draw(state, iv, width, height, theme)
    snap = state.images
    version, tick = (None if snap is None else snap.version), int(now * HEAT_HZ)
    memo = cache.memo("image.screens")
    key = (state.store_id, iv, width, height, id(theme))
    hit = memo.get(key)
    if hit is not None and (hit[0] == version or hit[1] == tick):
        return hit[2]
    return remember(memo, key, (version, tick, _draw(state, iv, width, height, theme)), 8)[2]


def _draw(state, iv: ImageView, width: int, height: int, theme) -> Canvas:
    c = Canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    snap = state.images
    cur = _current(snap, iv)
    if snap is None or (cur is None and not snap.images):
        title_rule(_NoCache, c, 0, f"{TITLE} · attention on the image", theme, "n/a")
        hint = _no_image_hint(state)
        for y, line in enumerate(hint, 1):
            message(c, min(y, height - 1), line, theme)
        put(c, 1, min(len(hint) + 1, height - 1), KEYS, theme.dim, max_width=width - 2)
        return c
    L = int(cur.attention.shape[0]) if cur is not None else 0
    layer = None if iv.layer is None or iv.layer >= max(L, 1) else iv.layer
    values, share = im.token_values(cur.attention, cur.image_share, layer) if cur is not None else (None, None)
    which = "all layers (mean)" if layer is None else f"layer {layer}"
    token = "no attention yet" if cur is None else f"token {cur.token_text!r} step {cur.step} ({cur.phase})"
    title_rule(_NoCache, c, 0, f"{TITLE} · gen {snap.generation} · {token} · {which}", theme,
               ("" if share is None else f"on image {share:.3f}",), theme.value)
    _share_line(c, 1, cur, layer, theme)
    body = max(1, height - 5)
    top = _draw_images(c, 2, body, snap, values, int(cur.pool) if cur is not None else 1, iv, theme)
    _legend(c, 2 + body, values, top, int(cur.pool) if cur is not None else 1, iv, theme)
    _history(c, 3 + body, snap, theme)
    put(c, 1, 4 + body, KEYS, theme.dim, max_width=width - 2)
    return c


def _no_image_hint(state) -> tuple:
    """Why there is no image (lines): a synthetic run never sends one; a real run's taps do."""
    if str(state.meta.get("source") or "").startswith("SYNTHETIC"):
        return ("no image: a synthetic run sends decode steps, never an image or its attention",
                "a real run sends them: --tui or --record, an image in the prompt; or --replay")
    return ("no image yet: the watched sample's image and its attention arrive with the run's taps "
            "(--tui or --record, a prompt with an image)",)


class _NoCache:
    """title_rule's cache for a screen that is itself memoised: draw the rule each time."""

    @staticmethod
    def memo(name, factory=dict):
        return factory()


def _share_line(c: Canvas, y: int, cur, layer, theme) -> None:
    if cur is None:
        message(c, y, "share on the image: n/a (no step of this generation yet)", theme)
        return
    sh = np.asarray(cur.image_share, np.float64)
    x = put(c, 1, y, "share on image by layer ", theme.label)
    if len(sh) <= 8:
        for i, v in enumerate(sh):
            x = put(c, x, y, f"L{i} ", theme.label)
            x = put(c, x, y, f"{v:.3f}  ", theme.token if layer == i else theme.value)
    else:
        x = put(c, x, y, sparkline(list(sh), len(sh), (0.0, 1.0)) + " ", theme.value)
        x = put(c, x, y, f"min {sh.min():.3f} L{int(sh.argmin())} max {sh.max():.3f} L{int(sh.argmax())}  ",
                theme.value)
    f = int(cur.pool)
    pooled = "" if f == 1 else f" · heat per {f}×{f} patches (the emit's budget)"
    put(c, x, y, f"│ all {sh.mean():.3f} · of {cur.tokens} image tokens{pooled}", theme.label)


def _draw_images(c: Canvas, y0: int, rows: int, snap, values, pool: int, iv: ImageView, theme) -> float:
    """Draw the images that fit from page iv.page; returns the largest patch value shown."""
    images = snap.images
    if not images:
        message(c, y0, f"the image of generation {snap.generation} did not arrive (attention below in numbers)",
                theme)
        return 0.0
    grids = [e.grid for e in images]
    per = im.split_grids(values, grids, pool) if values is not None else [None] * len(images)
    top = max((float(g.max()) for g in per if g is not None and g.size), default=0.0)
    n = len(images)
    fit_n = max(1, min(n, (c.width - 1) // (MIN_COLS + 2)))
    first = (iv.page % -(-n // fit_n)) * fit_n  # pages of fit_n images; n wraps to the first
    shown = range(first, min(n, first + fit_n))
    slot = (c.width - 1) // fit_n
    for k, i in enumerate(shown):
        _draw_one(c, 1 + k * slot, y0, slot - 2, rows, images[i], per[i], pool, top, iv.overlay, theme)
    if n > fit_n:
        label = f" images {first + 1}-{shown[-1] + 1} of {n} (n) "
        put(c, c.width - len(label) - 1, y0, label, theme.warn)
    return top


def _draw_one(c: Canvas, x0: int, y0: int, cols: int, rows: int, ev, grid, pool: int, top: float, overlay: bool,
              theme) -> None:
    t, mh, mw = ev.grid
    missing = " · no heat (not sent)" if grid is None and top > 0 else ""
    cap = f"image {ev.index + 1}/{ev.count}{missing} · merged grid {t}×{mh}×{mw} · {ev.size[1]}×{ev.size[0]} px"
    put(c, x0, y0, cap, theme.label, max_width=cols)
    gh, gw = (grid.shape if grid is not None else (mh, mw))
    numbers = grid is not None and gh <= 6 and gw <= 6 and cols >= 7 * gw + 12
    img_cols = cols - (7 * gw + 2 if numbers else 0)
    heat = overlay and grid is not None
    # without colour the heat cannot lie over the image: the two are drawn side by side
    pair = heat and not theme.color and img_cols >= 2 * MIN_COLS
    w, h = im.fit(ev.size, (img_cols - 1) // 2 if pair else img_cols, rows - 1)
    px = im.resample(ev.pixels, 2 * h, w)
    levels = im.patch_map(im.normalise(grid, top), 2 * h, w, (mh, mw), pool) if heat else None
    if theme.color:
        out = im.blend(px, levels, getattr(theme, "depth", "truecolor"))
        for r in range(h):
            up, down = out[2 * r], out[2 * r + 1]
            styles = [Style(fg=tuple(int(v) for v in a), bg=tuple(int(v) for v in b)) for a, b in zip(up, down)]
            c.chars[y0 + 1 + r][x0:x0 + w] = [HALF] * w
            c.styles[y0 + 1 + r][x0:x0 + w] = styles
    else:
        pictures = ([im.grey_glyphs(px)] if levels is None or pair else []) + (
            [np.vectorize(ramp_glyph)(levels[0::2])] if levels is not None else [])
        for k, glyphs in enumerate(pictures):
            for r in range(h):
                c.chars[y0 + 1 + r][x0 + k * (w + 1):x0 + k * (w + 1) + w] = list(glyphs[r])
        w = len(pictures) * (w + 1) - 1
    if numbers:  # small grids: the weights themselves beside the image, as the patches lie
        nx = x0 + w + 2
        for r in range(gh):
            for q in range(gw):
                hot = top > 0 and grid[r, q] >= top
                put(c, nx + 7 * q, y0 + 1 + r, f"{grid[r, q]:.4f}"[:6], theme.warn if hot else theme.value)


def _legend(c: Canvas, y: int, values, top: float, pool: int, iv: ImageView, theme) -> None:
    if values is None:
        message(c, y, "no attention for this generation yet", theme)
        return
    x = put(c, 1, y, "heat ", theme.label)
    if not iv.overlay:
        x = put(c, x, y, "off (o) ", theme.dim)
    elif theme.color and getattr(theme, "depth", "truecolor") in im.LOW_DEPTH_BLEND:
        for i, label in enumerate(("<.25", "<.5", "<.75", "≥.75")):  # the four levels drawn
            x = put(c, x, y, "  ", Style(bg=tuple(int(u) for u in im.heat_rgb(np.asarray(i / 3)))))
            x = put(c, x, y, label + " ", theme.value)
        x = put(c, x, y, "of the max ", theme.value)
    elif theme.color:
        for v in np.linspace(0, 1, 12):
            rgb = tuple(int(u) for u in im.heat_rgb(np.asarray(v)))
            x = put(c, x, y, " ", Style(bg=rgb))
        x += 1
    else:
        x = put(c, x, y, f"{RAMP[0]}<.25 {RAMP[1]}<.5 {RAMP[2]}<.75 {RAMP[3]} of the max ", theme.value)
    x = put(c, x, y, f"0 … {fmt_num(top, 4)} ", theme.value)
    what = "a merged patch" if pool == 1 else f"{pool}×{pool} merged patches"
    put(c, x, y, f"weight on {what} (mean over heads); the image: what the model saw", theme.label,
        max_width=c.width - x - 1)


def _history(c: Canvas, y: int, snap, theme) -> None:
    hist = snap.history
    if not hist:
        return
    x = put(c, 1, y, "first token's share on image by generation " if c.width >= 100 else "first token on image ",
            theme.label)
    n = max(1, min(len(hist), c.width - x - 31, 120))
    x = put(c, x, y, sparkline([p.share for p in hist[-n:]], n) + " ", theme.value)
    first, last = hist[-n], hist[-1]
    put(c, x, y, f"gen {first.generation} {first.share:.3f} → gen {last.generation} {last.share:.3f}", theme.value,
        max_width=c.width - x - 1)
