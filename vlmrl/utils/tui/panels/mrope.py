"""mRoPE: the temporal / height / width rotary position of the current token.

Text tokens have T = H = W; image tokens take their grid coordinates. The offset is the
position minus the cache slot: image tokens compress positions, so after an image the
text positions run behind the slots (Qwen3-VL's rope_deltas).
"""
from __future__ import annotations

from vlmrl.utils.tui.canvas import Canvas
from vlmrl.utils.tui.panels.common import NA, message, share_row, title_row
from vlmrl.utils.tui.panels.rows import fresh_row, pairs_line, sparse_canvas
from vlmrl.utils.tui.render_cache import RenderCache

TITLE = "mRoPE"


def cache_key(state, view, now):
    b = view.batch_index % state.batch_size()
    return (state.row_version(b), b)


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    b = view.batch_index % state.batch_size()
    d = state.decode_for(b)
    c = sparse_canvas(width, height)  # both rows are shared: composed, never written into
    if width <= 0 or height <= 0:
        return c
    if d is None:
        share_row(c, 0, title_row(cache, width, TITLE, theme, right=f"T {NA} H {NA} W {NA}", right_style=theme.na))
        if height > 1:
            fresh_row(c, 1)
            message(c, 1, "no token yet", theme)
        return c
    t, h, w = int(d.mrope_t), int(d.mrope_h), int(d.mrope_w)
    kind = "text token (T=H=W)" if t == h == w else "image token (grid)"
    # the position changes with every token: composed, not cached
    share_row(c, 0, title_row(cache, width, TITLE, theme, right=f"T {t} H {h} W {w}", keep=False))
    if height > 1:
        slot = int(d.cache_len) - 1
        offset = f"{t - slot:+d}" if slot >= 0 else NA
        # the offset only moves after an image: the line is cached
        pairs_line(cache, c, 1, [("", kind), ("T-slot", offset)], theme, sep=" · ", keep=True)
    return c
