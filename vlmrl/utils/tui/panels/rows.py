"""Rows for the panels re-rendered on every token (decode, flow, mRoPE, KV cache).

Those panels redraw 20 times a second with cold caches (the render thread sleeps in
between), so what a frame costs is mostly the memory and the Python calls it touches.
Their canvases are built from shared rows instead of a fresh width x height grid: rows
that did not change are the cached lists themselves (`sparse_canvas` + `share_row`),
and rows that change every token are built in one pass as new lists (`compose_row`,
`pairs_row`), cell for cell what the same `put` calls would write on a blank row; when
a row would not compose (long or cut text), the panel writes it with `put` as before.
Every row here is read-only once it is in a canvas: nothing may write into it. Rows kept
between frames (in the dashboard's RenderCache) are tuples, so a write into one fails
instead of changing every canvas that shares it.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

from vlmrl.utils.tui.canvas import PLAIN, Canvas, text_memo, text_width
from vlmrl.utils.tui.palette import hbar
from vlmrl.utils.tui.panels.common import NA, put_pairs, remember


@functools.lru_cache(maxsize=64)
def blank_row(width: int) -> tuple:
    """The blank (chars, styles) row of a width: tuples, shared by every canvas."""
    return (" ",) * width, (PLAIN,) * width


def sparse_canvas(width: int, height: int) -> Canvas:
    """A blank canvas whose rows are all one shared (immutable) blank row: give a row its
    own lists with `fresh_row` before writing into it, or replace it whole."""
    c = Canvas.__new__(Canvas)
    c.damage = None
    c.width, c.height = max(0, int(width)), max(0, int(height))
    blank_c, blank_s = blank_row(c.width)
    c.chars, c.styles = [blank_c] * c.height, [blank_s] * c.height
    return c


def fresh_row(canvas: Canvas, y: int) -> None:
    """Give row y of a `sparse_canvas` blank lists of its own, to `put` into."""
    if 0 <= y < canvas.height:
        blank = blank_row(canvas.width)
        canvas.chars[y], canvas.styles[y] = list(blank[0]), list(blank[1])


def text_cells(text: str):
    """The cells `put` writes for `text` on a blank row where it fits whole: a str when
    each char is one safe cell, else a tuple ("" right halves of wide chars); None for
    long text. The dashboard's own one-cell glyphs (`·`, `→`, bars, ramps) are checked as a
    set, so figure lines that are new every frame add no cache entries."""
    if text.isascii() and text.isprintable() or ONE_CELL.issuperset(text):
        return text
    return _cells(text) if len(text) < 64 else None


# Printable ASCII and the one-cell glyphs the panels draw (box drawing, blocks, ramps,
# arrows, the middle dot and ellipsis): text made only of these lays out one cell per char.
ONE_CELL = frozenset(chr(c) for c in range(0x20, 0x7F)) | frozenset(
    chr(c) for c in range(0x2500, 0x25A0)) | frozenset("·…→←↑↓▶◆▦×±≥≤−")


@text_memo(maxsize=4096)
def _cells(text: str):
    """text_cells of other text, laid out once by Canvas.put on a blank row wide enough
    for all of it (so the cells are what it writes wherever the text fits whole)."""
    row = Canvas(text_width(text) + 2, 1)
    cells = row.chars[0][:row.put(0, 0, text)]
    if cells == list(text):  # every char safe and one cell
        return text
    return tuple(cells)


title_width = functools.lru_cache(maxsize=256)(text_width)  # titles repeat; may hold `·`


def compose_row(width: int, x: int, pieces) -> Optional[tuple]:
    """A new full-width (chars, styles) row: `pieces` [(text, style)] one after another
    from column x on a blank row. None when a piece is long text or the run would pass
    the right edge (then draw the row with `put`)."""
    chars, styles = [" "] * x, [PLAIN] * x
    for text, style in pieces:
        cells = text if text.isascii() and text.isprintable() else text_cells(text)
        if cells is None:
            return None
        chars += cells
        styles += [style] * len(cells)
    pad = width - len(chars)
    if pad < 0:
        return None
    chars += [" "] * pad
    styles += [PLAIN] * pad
    return chars, styles


def pairs_row(width: int, x: int, pairs, theme, sep: str = "  ", chars=None, styles=None):
    """The row `put_pairs` writes from column x on a blank row (a pair that would not fit
    whole is left out with all after it), when every label and value is one cell per
    char (the usual case); else None. `chars`, `styles`: the row's first x cells."""
    if x > width:
        return None
    label_st, value_st = theme.label, theme.value
    if chars is None:
        chars, styles = [" "] * x, [PLAIN] * x
    end, limit = x, width - 1
    head = ""  # what goes before a label: nothing before the first pair, then `sep`
    for label, value in pairs:
        if label:
            head += label + " "
        seg = head + value
        if not (seg.isascii() and seg.isprintable()) and type(text_cells(seg)) is not str:
            return None
        if end + len(seg) > limit:
            break
        end += len(seg)
        chars += seg
        styles += [label_st] * len(head)
        styles += [theme.na if value == NA else value_st] * len(value)
        head = sep
    chars += [" "] * (width - end)
    styles += [PLAIN] * (width - end)
    return chars, styles


def pairs_line(cache, canvas: Canvas, y: int, pairs: Sequence, theme, sep: str = "  ", x: int = 1,
               keep: bool = False) -> None:
    """`put_pairs` on blank row y of a `sparse_canvas`, as a row of its own. Figures that
    change every token are composed afresh (keeping them would only churn); `keep=True`
    for a line that repeats between frames: its row is then kept and shared."""
    if not (0 <= y < canvas.height):
        return
    key = memo = None
    if keep:
        memo = cache.memo("rows.pair_rows")
        key = (tuple(pairs), x, canvas.width, sep, id(theme))
        try:
            row = memo.get(key)
        except TypeError:  # an unhashable value
            key = row = None
        if row is not None:
            canvas.chars[y], canvas.styles[y] = row
            return
    row = pairs_row(canvas.width, x, pairs, theme, sep) if x >= 0 else None
    if row is None:
        fresh_row(canvas, y)
        put_pairs(cache, canvas, x, y, pairs, theme, sep)
        return
    if key is not None:
        row = remember(memo, key, (tuple(row[0]), tuple(row[1])), 1024)
    canvas.chars[y], canvas.styles[y] = row


def bar_cells(frac: float, width: int):
    """`text_cells(hbar(frac, width))`, memoised on hbar's own eighths for a fraction in
    [0, 1] (the bar depends on nothing else): at most 8 x width + 1 bars per width, so a
    new token or cache length does not lay one out."""
    if type(frac) is float and 0.0 <= frac <= 1.0:
        return _bar_eighths(round(frac * width * 8), width)  # hbar's rounding of an unclipped fraction
    return text_cells(hbar(frac, width))


@functools.lru_cache(maxsize=8192)
def _bar_eighths(eighths: int, width: int):
    """bar_cells of a bar filled `eighths` eighths of a cell (a pure function: memoised)."""
    if width <= 0:
        return text_cells("")
    return text_cells(hbar(eighths / (8.0 * width), width))
