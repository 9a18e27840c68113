"""DECODE LIVE: the token just sampled (text, id, probability, top alternatives),
`Cache: n/max`, and the recent tokens with probability bars."""
from __future__ import annotations

from vlmrl.utils.tui.canvas import Canvas, text_width, truncate
from vlmrl.utils.tui.palette import hbar, spark_glyph
from vlmrl.utils.tui.panels.common import (NA, RowCache, fmt_int, fmt_num, message, put, put_pairs,
                                           title_rule)

TITLE = "DECODE LIVE"
TOKEN_CELLS = 16  # widest token text shown in the recent list


def cache_key(state, view, now):
    b = view.batch_index % state.batch_size()
    return (state.row_version(b), b, state.batch)


def _quoted(text: str, width: int) -> str:
    return '"' + truncate(text, max(width - 2, 1)) + '"'


HEAD_ROWS = 4  # title, token, alternatives, and the one-line stream on short panels


def _canvas(width: int, height: int) -> Canvas:
    """A blank canvas whose rows below HEAD_ROWS are one shared blank row: they are
    either left blank or replaced whole by cached token rows (never written into), so
    a tall panel costs no per-row allocation."""
    c = Canvas(width, min(height, HEAD_ROWS))
    if height > HEAD_ROWS:
        blank = _BLANK.get((width, 0), width, lambda row: None)
        c.chars += [blank[0]] * (height - HEAD_ROWS)
        c.styles += [blank[1]] * (height - HEAD_ROWS)
        c.height = height
    return c


def render(state, view, width, height, now, theme) -> Canvas:
    c = _canvas(width, height)
    if height <= 0 or width <= 0:
        return c
    b = view.batch_index % state.batch_size()
    d = state.decode_for(b)
    cache = NA if d is None else f"{d.cache_len}/{d.cache_max}"
    right = f"Cache: {cache}"
    title = TITLE if state.batch_size() <= 1 else f"{TITLE} · b{b}/{state.batch_size()}"
    if text_width(title) + text_width(right) + 8 > width:
        title = TITLE  # the cache figure matters more than the row label (the footer has it)
    title_rule(c, 0, title, theme, right=right)
    if d is None:
        message(c, 1, f"waiting for decode events (batch row {b})", theme)
        return c
    y = 1
    if y < height:
        x = put(c, 1, y, "▶ ", theme.token)
        x = put(c, x, y, _quoted(str(d.token_text), min(24, max(8, width - 30))), theme.token)
        put_pairs(c, x + 2, y, [("id", fmt_int(d.token_id)), ("p", fmt_num(d.token_prob, 3)),
                               ("H", fmt_num(d.entropy, 2)), ("step", fmt_int(d.step))], theme)
        y += 1
    if y < height:
        _alternatives(c, y, d, theme)
        y += 1
    recent = state.recent.get(b, ())
    rows = height - y
    if rows <= 0 or not recent:
        return c
    if rows >= 3:
        _recent_list(c, y, recent, rows, theme)
    else:
        _recent_stream(c, y, recent, theme)
    return c


def _alternatives(c: Canvas, y: int, d, theme) -> None:
    x = put(c, 1, y, "alts ", theme.label)
    if not d.top_k:
        put(c, x, y, NA, theme.na)
        return
    for entry in d.top_k:
        try:
            tid, text, prob = entry
        except (TypeError, ValueError):
            continue
        style = theme.token if tid == d.token_id else theme.value
        quoted, p = _quoted(str(text), 12), f" {fmt_num(prob, 2)}  "
        if x + text_width(quoted) + len(p) - 2 > c.width:
            break  # an alternative is shown whole or not at all
        x = put(c, x, y, quoted, style)
        x = put(c, x, y, p, theme.label)


_ROWS = RowCache()
_BLANK = RowCache(limit=64)


def _recent_list(c: Canvas, y: int, recent, rows: int, theme) -> None:
    """Step, token, probability bar, probability; one fixed row per step (step mod rows).

    A sweep, like an oscilloscope: the newest token (▶) overwrites the oldest slot. A
    scrolling list would change every row per token; this changes one row and one cell,
    which keeps frame diffs small.
    """
    width = c.width
    bar_w = max(4, min(20, width - TOKEN_CELLS - 18))
    shown = recent[-rows:]
    cached = _ROWS.rows
    tid = id(theme)
    chars, styles = c.chars, c.styles
    for rec in shown:
        row = cached.get((rec, width, tid))  # hits are the common case: no closure built
        if row is None:
            row = _ROWS.get((rec, width, tid), width, lambda r, rec=rec: _draw_token(r, rec, bar_w, theme))
        # the cached row lists themselves, not copies: canvases are read-only once
        # returned, and the layout and the frame diff then see unchanged rows by identity
        chars[y + rec.step % rows] = row[0]
        styles[y + rec.step % rows] = row[1]
    if shown:
        yy = y + shown[-1].step % rows
        chars[yy], styles[yy] = list(chars[yy]), list(styles[yy])  # the marker row is written: copy it
        put(c, 0, yy, "▶", theme.token)


def _draw_token(row: Canvas, rec, bar_w: int, theme) -> None:
    x = put(row, 1, 0, f"{rec.step:>5} ", theme.label)
    put(row, x, 0, _quoted(rec.text, TOKEN_CELLS), theme.value)
    x += TOKEN_CELLS + 3
    x = put(row, x, 0, hbar(rec.prob, bar_w), theme.good)
    put(row, x + 1, 0, fmt_num(rec.prob, 2), theme.label)


def _recent_stream(c: Canvas, y: int, recent, theme) -> None:
    """One line, newest at the right: each token followed by a ▁..█ probability glyph."""
    parts, used = [], 0
    limit = c.width - 3
    for rec in reversed(recent):
        text = truncate(rec.text, 10) + spark_glyph(rec.prob)
        w = text_width(text) + 1
        if used + w > limit:
            break
        parts.append((text, rec))
        used += w
    x = 1
    for text, rec in reversed(parts):
        x = put(c, x, y, text[:-1], theme.value)
        x = put(c, x, y, text[-1], theme.good) + 1
