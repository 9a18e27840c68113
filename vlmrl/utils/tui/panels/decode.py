"""DECODE LIVE: the token just sampled (text, id, probability, top alternatives),
`Cache: n/max`, and the recent tokens with probability bars."""
from __future__ import annotations


from vlmrl.utils.tui.canvas import PLAIN, Canvas, text_memo, text_width, truncate
from vlmrl.utils.tui.palette import hbar, spark_glyph
from vlmrl.utils.tui.panels.common import NA, fmt_int, fmt_num, message, put, put_pairs, remember, share_row, title_row
from vlmrl.utils.tui.render_cache import RenderCache
from vlmrl.utils.tui.panels.rows import (bar_cells, blank_row, fresh_row, pairs_row, sparse_canvas, text_cells,
                                         title_width)

TITLE = "DECODE LIVE"
TOKEN_CELLS = 16  # widest token text shown in the recent list


def cache_key(state, view, now):
    b = view.batch_index % state.batch_size()
    return (state.row_version(b), b, state.batch)


def _quoted(text: str, width: int) -> str:
    return '"' + truncate(text, max(width - 2, 1)) + '"'


@text_memo(maxsize=4096)
def _quoted_w(text: str, width: int):
    """(_quoted(text, width), its cells): the same vocabulary comes back every few tokens."""
    q = _quoted(text, width)
    return q, text_width(q)


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    if height <= 0 or width <= 0:
        return sparse_canvas(width, height)
    n = state.batch_size()
    b = view.batch_index % n
    d = state.decode_for(b)
    filled = NA if d is None else f"{d.cache_len}/{d.cache_max}"
    right = f"Cache: {filled}"
    title = TITLE if n <= 1 else f"{TITLE} · b{b}/{n}"
    if title_width(title) + (len(right) if right.isascii() and right.isprintable() else text_width(right)) + 8 > width:
        title = TITLE  # the cache figure matters more than the row label (the footer has it)
    recent = state.recent.get(b, ()) if d is not None else ()
    rows = height - 3
    # Rows below the title are shared: composed lines, cached token rows, or blank. The
    # stream line of a short panel is written with put, so it gets its own lists.
    c = sparse_canvas(width, height)
    # the cache figure changes with every token: composed, not cached
    share_row(c, 0, title_row(cache, width, title, theme, right=right, keep=False))
    if d is None:
        fresh_row(c, 1)
        message(c, 1, f"waiting for decode events (batch row {b})", theme)
        return c
    if height > 1:
        _token_line(c, d, theme, cache)
    if height > 2:
        _alternatives(c, 2, d, theme)
    if rows <= 0 or not recent:
        return c
    if rows >= 3:
        _recent_list(c, 3, recent, rows, theme, cache, b)
    else:
        fresh_row(c, 3)
        _recent_stream(c, 3, recent, theme)
    return c


def _token_line(c: Canvas, d, theme, cache) -> None:
    """`▶ "token"  id N  p P  H E  step S`."""
    width = c.width
    quoted = _quoted_w(str(d.token_text), min(24, max(8, width - 30)))[0]
    # fmt_num / fmt_int inline for the usual positive floats and ints: the same text,
    # without their calls (a cold call costs more than the formatting)
    tid, p, h, step = d.token_id, d.token_prob, d.entropy, d.step
    pairs = [("id", str(tid) if type(tid) is int else fmt_int(tid)),
             ("p", f"{p:.3f}" if type(p) is float and 0.0 < p < 1e15 else fmt_num(p, 3)),
             ("H", f"{h:.2f}" if type(h) is float and 0.0 < h < 1e15 else fmt_num(h, 2)),
             ("step", str(step) if type(step) is int else fmt_int(step))]
    head = text_cells("▶ " + quoted)
    row = None
    if head is not None and 1 + len(head) + 2 <= width:
        # the pairs start two cells after the token, as put_pairs(x + 2) places them
        token = theme.token
        chars = [" "]
        chars += head
        chars += "  "
        styles = [PLAIN] + [token] * len(head) + [PLAIN, PLAIN]
        row = pairs_row(width, len(chars), pairs, theme, chars=chars, styles=styles)
    if row is None:
        fresh_row(c, 1)
        x = put(c, 1, 1, "▶ ", theme.token)
        x = put(c, x, 1, quoted, theme.token)
        put_pairs(cache, c, x + 2, 1, pairs, theme)
    else:
        c.chars[1], c.styles[1] = row


def _alternatives(c: Canvas, y: int, d, theme) -> None:
    """`alts "a" 0.19  "b" 0.05 ...`: each alternative whole or not at all. Built as one
    row (it changes with every token); `_draw_alternatives` when it does not compose."""
    width, chosen = c.width, d.token_id
    label = theme.label
    chars = [" "]
    chars += "alts "
    styles = [PLAIN] + [label] * 5
    if not d.top_k:
        chars += NA
        styles += [theme.na] * len(NA)
    x = 6
    for entry in d.top_k or ():
        try:
            tid, text, prob = entry
        except (TypeError, ValueError):
            continue
        quoted, qw = _quoted_w(str(text), 12)
        p = f" {prob:.2f}  " if type(prob) is float and 0.0 < prob < 1e15 else f" {fmt_num(prob, 2)}  "
        if x + qw + len(p) - 2 > width:
            break  # an alternative is shown whole or not at all
        cells = quoted if quoted.isascii() and quoted.isprintable() else text_cells(quoted)
        if cells is None:
            chars = None
            break
        # the last one's two trailing blanks may fall off the edge, as put clips them
        p = p[:width - x - qw]
        chars += cells
        chars += p
        styles += [theme.token if tid == chosen else theme.value] * qw
        styles += [label] * len(p)
        x += qw + len(p)
    if chars is None or len(chars) > width:
        fresh_row(c, y)
        _draw_alternatives(c, y, d, theme)
        return
    chars += [" "] * (width - len(chars))
    styles += [PLAIN] * (width - len(styles))
    c.chars[y], c.styles[y] = chars, styles


def _draw_alternatives(c: Canvas, y: int, d, theme) -> None:
    x = put(c, 1, y, "alts ", theme.label)
    if not d.top_k:
        put(c, x, y, NA, theme.na)
        return
    for entry in d.top_k:
        try:
            tid, text, prob = entry
        except (TypeError, ValueError):
            continue
        quoted, qw = _quoted_w(str(text), 12)
        p = f" {fmt_num(prob, 2)}  "
        if x + qw + len(p) - 2 > c.width:
            break
        x = put(c, x, y, quoted, theme.token if tid == d.token_id else theme.value)
        x = put(c, x, y, p, theme.label)


class _Sweep:
    """What the recent list of one (batch row, width, rows, theme) drew last: the records
    shown, the slot rows, and which record owns each slot (as its position in the token
    stream: `base` is the position of shown[0]). Tokens arrive one or two per frame, so
    the next list is usually the last one minus a few oldest records plus a few new ones:
    only the slots of those are touched (looking up every record's row, hashing each
    record, was most of this panel's cost)."""

    __slots__ = ("shown", "base", "owners", "chars", "styles")

    def __init__(self, rows: int, blank: tuple):
        self.shown, self.base = (), 0
        self.owners = [None] * rows
        self.chars = [blank[0]] * rows
        self.styles = [blank[1]] * rows


def _recent_list(c: Canvas, y: int, recent, rows: int, theme, cache, b: int = 0) -> None:
    """Step, token, probability bar, probability; one fixed row per step (step mod rows).

    A sweep, like an oscilloscope: the newest token (▶) overwrites the oldest slot. A
    scrolling list would change every row per token; this changes one row and one cell,
    which keeps frame diffs small.
    """
    width = c.width
    shown = recent[-rows:]
    key = (b, width, rows, id(theme))
    sweeps = cache.memo("decode.sweeps")
    sw = sweeps.get(key)
    if sw is None:
        sw = remember(sweeps, key, _Sweep(rows, blank_row(width)), 32)
    old, base, owners, chars, styles = sw.shown, sw.base, sw.owners, sw.chars, sw.styles
    # shown = old[d:] + shown[m:]: the records kept (equal records draw equal rows in
    # equal slots) and the new ones; else nothing is carried over (d = len(old))
    try:
        d = old.index(shown[0])
        m = len(old) - d
        if old[d:] != shown[:m]:
            d, m = len(old), 0
    except (ValueError, IndexError):
        d, m = len(old), 0
    drawn = None
    if d == len(old):  # nothing carried over: every slot starts blank
        # rows of records still shown are kept (a late token inserted mid-list, a
        # batch row shown again): keyed by the record object itself
        drawn = {id(old[o - base]): (old[o - base], chars[s], styles[s])
                 for s, o in enumerate(owners) if o is not None}
        sw.__init__(rows, blank_row(width))
        owners, chars, styles = sw.owners, sw.chars, sw.styles
    elif d:
        blank_c, blank_s = blank_row(width)
        for i in range(d):
            # a record that left still owns its slot only if nothing later took it
            s = old[i].step % rows
            if owners[s] == base + i:
                owners[s], chars[s], styles[s] = None, blank_c, blank_s
    base = sw.base = base + d
    bar_w = max(4, min(20, width - TOKEN_CELLS - 18))
    for i in range(m, len(shown)):  # in order: a later record of the same slot wins
        rec = shown[i]
        hit = drawn and drawn.get(id(rec))
        if hit and hit[0] is rec:
            row = hit[1:]
        else:
            row = _token_row(rec, width, bar_w, theme)
            if row is None:
                r = Canvas(width, 1)
                _draw_token(r, rec, bar_w, theme)
                row = (r.chars[0], r.styles[0])
            row = (tuple(row[0]), tuple(row[1]))  # kept in the sweep: immutable
        s = rec.step % rows
        owners[s], chars[s], styles[s] = base + i, row[0], row[1]
    sw.shown = shown
    # the slot rows themselves, not copies: canvases are read-only once returned,
    # and the layout and the frame diff then see unchanged rows by identity
    c.chars[y:y + rows] = chars
    c.styles[y:y + rows] = styles
    if shown:
        yy = y + shown[-1].step % rows
        chars, styles = list(c.chars[yy]), list(c.styles[yy])  # the marker row is written: a copy
        c.chars[yy], c.styles[yy] = chars, styles
        if chars[0] != "" and chars[1:2] != [""]:  # put's own fast path, inline
            chars[0], styles[0] = "▶", theme.token
        else:
            put(c, 0, yy, "▶", theme.token)


def _token_row(rec, width: int, bar_w: int, theme):
    """The row `_draw_token` draws, joined from its pieces' cells (a new token's row is
    drawn every frame; one list build instead of a canvas and four puts). None when a
    piece would be cut at the edge or is not cached text: `_draw_token` then draws it."""
    num = f"{rec.step:>5} "
    quoted = _quoted_w(rec.text, TOKEN_CELLS)[0]
    if not (quoted.isascii() and quoted.isprintable()):
        quoted = text_cells(quoted)
    p = rec.prob
    bar = bar_cells(p, bar_w)
    p = f"{p:.2f}" if type(p) is float and 0.0 < p < 1e15 else fmt_num(p, 2)
    x1 = 1 + len(num)
    x2 = x1 + TOKEN_CELLS + 3
    end = x2 + bar_w + 1 + len(p)
    if quoted is None or bar is None or type(bar) is not str or end > width:
        return None
    qn = len(quoted)
    chars = [" "]
    chars += num
    chars += quoted
    chars += [" "] * (x2 - x1 - qn)
    chars += bar
    chars.append(" ")
    chars += p
    chars += [" "] * (width - end)
    label = theme.label
    styles = [PLAIN] + [label] * len(num) + [theme.value] * qn + [PLAIN] * (x2 - x1 - qn)
    styles += [theme.good] * bar_w
    styles.append(PLAIN)
    styles += [label] * len(p)
    styles += [PLAIN] * (width - end)
    return chars, styles


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
