"""Helpers every panel shares: title rules, number formatting, fast row writes.

Panels are pure: `render(state, view, width, height, now, theme, cache) -> Canvas` of
exactly width x height cells, and `cache_key(state, view, now)` naming every input besides
the size and theme, so the layout can reuse a panel's canvas while its inputs are unchanged.
`cache` is the dashboard's `RenderCache`: rows a panel keeps between frames live there
(see render_cache.py), never in a module.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

from vlmrl.utils.tui.canvas import Canvas, Style, char_width, sanitize, text_memo, text_width, truncate

NA = "n/a"  # a value that was not measured: never a made-up placeholder
RULE = "━"


def fmt_num(value, digits: int = 3, signed: bool = False) -> str:
    """A float with `digits` decimals, or n/a when missing or not finite."""
    if value is None:
        return NA
    try:
        v = float(value)
    except (TypeError, ValueError):
        return NA
    if not math.isfinite(v):
        return NA
    s = format(v, _num_spec(digits, signed))
    if s[0] == "-" and s[1] == "0" and not s.strip("-0."):  # rounds to zero: no "-0.000"
        s = ("+" if signed else "") + s[1:]
    return s


@functools.lru_cache(maxsize=64)
def _num_spec(digits: int, signed: bool) -> str:
    """The format spec of fmt_num (called for most figures every frame)."""
    return f"{'+' if signed else ''}.{int(digits)}f"


def fmt_int(value) -> str:
    if value is None:
        return NA
    try:
        return str(int(value))
    except (TypeError, ValueError, OverflowError):
        return NA


def fmt_rate(value) -> str:
    """Tokens/sec etc.: compact, n/a when missing or not finite."""
    if value is None:
        return NA
    v = float(value)
    if not math.isfinite(v):
        return NA
    if abs(v) >= 10000:
        return f"{v / 1000:.1f}k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return NA
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return NA


def fmt_bytes_pair(a: Optional[float], b: Optional[float]) -> str:
    """`a/b unit` in the unit of the larger one (e.g. `13.6/448.0 MiB`); n/a when missing."""
    if a is None:
        return NA
    if b is None:
        return fmt_bytes(a)
    big, unit, scale = max(float(a), float(b)), "B", 1.0
    for u in ("KiB", "MiB", "GiB", "TiB"):
        if big < 1024 * scale:
            break
        scale *= 1024.0
        unit = u
    if unit == "B":
        return f"{int(a)}/{int(b)} B"
    return f"{a / scale:.1f}/{b / scale:.1f} {unit}"


def fmt_duration(seconds: float) -> str:
    s = int(max(seconds, 0))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def title_rule(cache, canvas: Canvas, y: int, title: str, theme, right="", right_style: Optional[Style] = None) -> None:
    """`━ TITLE ━━━━━━━ right ━` across the canvas row y (rows cached: titles repeat).

    `right` may be a sequence of alternatives, longest first: the first that fits whole
    is drawn.
    """
    w = canvas.width
    if w <= 0 or y < 0 or y >= canvas.height:
        return
    paste_row(canvas, y, title_row(cache, w, title, theme, right, right_style))


def title_row(cache, width: int, title: str, theme, right="", right_style: Optional[Style] = None,
              keep: bool = True) -> tuple:
    """The (chars, styles) row `title_rule` draws, for panels that write nothing else on
    their title row: they share it (`share_row`) instead of copying it every frame.
    `keep=False` for a figure that changes with every token: keeping those rows would
    only evict the titles that repeat, so the bare title is kept and the figure laid
    on a copy of it."""
    alts = (right,) if isinstance(right, str) else tuple(right)
    rstyle = right_style or theme.value
    if keep:
        key = (title, alts, rstyle, width, id(theme))
        titles = cache.memo("common.titles", _title_rows)
        hit = titles.rows.get(key)  # the common case: no closure built
        if hit is None:
            hit = titles.get(key, width, lambda row: _draw_title(row, title, alts, rstyle, theme))
        return hit
    key = (title, width, id(theme))
    bare_titles = cache.memo("common.bare_titles")  # (title, width, theme id) -> (chars, styles, end)
    bare = bare_titles.get(key)
    if bare is None:
        row = Canvas(width, 1)
        x = _draw_title(row, title, (), rstyle, theme)
        bare = remember(bare_titles, key, (tuple(row.chars[0]), tuple(row.styles[0]), x), 256)
    chars, styles, x = bare
    alt = alts[0] if len(alts) == 1 else None
    if alt is None or not (alt.isascii() and alt.isprintable()):
        row = Canvas(width, 1)
        _draw_title(row, title, alts, rstyle, theme)
        return row.chars[0], row.styles[0]
    rx = width - len(alt) - 3
    if not alt or rx <= x:
        return chars, styles  # no figure shown: the bare row itself
    # what _draw_title's put of the figure writes (printable ASCII on the rule)
    n = len(alt) + 2
    chars, styles = list(chars), list(styles)
    chars[rx:rx + n] = f" {alt} "
    styles[rx:rx + n] = [rstyle] * n
    return chars, styles


def _draw_title(row: Canvas, title: str, alts, rstyle: Style, theme) -> int:
    """Draws the title row; returns the column after the title."""
    w = row.width
    row.chars[0][:] = [RULE] * w
    row.styles[0][:] = [theme.rule] * w
    x = put(row, 1, 0, f" {title} ", theme.title)
    for alt in alts:
        if not alt:
            continue
        rx = w - text_width(alt) - 3
        if rx > x:  # the right-hand value is shown whole or not at all
            put(row, rx, 0, f" {alt} ", rstyle)
            break
    return x


def put_pairs(cache, canvas: Canvas, x: int, y: int, pairs: Sequence, theme, sep: str = "  ") -> int:
    """Write `label value` pairs left to right (n/a dimmed); a pair that would not fit
    whole is left out with all after it, so no value is ever shown cut.

    The line is composed as one run of cells and slice-assigned once when all of it is
    one cell per character (the usual case); otherwise each piece goes through `put`.
    """
    if not (0 <= y < canvas.height):
        return x
    # Composed pair lines by (pairs, x, width, sep, theme): most lines repeat between
    # frames (static figures, or values that change every few steps): composed once.
    memo = cache.memo("common.pairs")
    key = (tuple(pairs), x, canvas.width, sep, id(theme))
    try:
        hit = memo.get(key)
    except TypeError:  # an unhashable value: compose without the cache
        key, hit = None, _compose_pairs(x, canvas.width - 1, pairs, theme, sep)
    if hit is None:
        hit = remember(memo, key, _compose_pairs(x, canvas.width - 1, pairs, theme, sep), 2048)
    pieces, text, styles = hit
    if not pieces:
        return x
    if text is not None and 0 <= x:
        row = canvas.chars[y]
        n = len(text)
        if row[x] != "" and (x + n >= canvas.width or row[x + n] != ""):
            row[x:x + n] = text
            canvas.styles[y][x:x + n] = styles
            return x + n
    for t, st in pieces:
        x = put(canvas, x, y, t, st)
    return x


def _compose_pairs(x: int, limit: int, pairs, theme, sep: str):
    """(pieces that fit, their text, per-cell styles); text None unless every piece is
    one cell per character (then the line can be slice-assigned)."""
    pieces = []
    end = x
    simple = True
    for i, (label, value) in enumerate(pairs):
        part = [(sep, theme.label)] if i else []
        if label:
            part.append((label + " ", theme.label))
        part.append((value, theme.na if value == NA else theme.value))
        need = 0
        for t, _ in part:
            w, one = _measure(t)
            need += w
            simple = simple and one
        if end + need > limit:
            break
        pieces += part
        end += need
    if not simple or not pieces:
        return tuple(pieces), None, None
    text = "".join(t for t, _ in pieces)
    styles = []
    for t, st in pieces:
        styles += [st] * len(t)
    return tuple(pieces), text, tuple(styles)


@text_memo(maxsize=8192)
def _measure(text: str):
    """(cells, one cell per character and already safe) of a piece of text."""
    if text.isascii() and text.isprintable():
        return len(text), True
    return text_width(text), _one_cell_each(text)


@text_memo(maxsize=8192)
def _one_cell_each(text: str) -> bool:
    """True when the text is already safe and every character takes exactly one cell
    (box drawing, blocks, ramps...), so it can be slice-assigned like ASCII."""
    return sanitize(text) == text and all(char_width(ch) == 1 for ch in text)


def put(canvas: Canvas, x: int, y: int, text: str, style: Style, max_width: Optional[int] = None) -> int:
    """Canvas.put with a fast path: printable ASCII (which cannot carry an escape) and
    known one-cell-per-char text are slice-assigned directly, unless that would touch
    half of a wide character."""
    if max_width is None and 0 <= x and 0 <= y < canvas.height and (
            (text.isascii() and text.isprintable()) or (len(text) < 64 and _one_cell_each(text))):
        n = min(len(text), canvas.width - x)
        if n <= 0:
            return x
        row = canvas.chars[y]
        if n == len(text) and row[x] != "" and (x + n >= canvas.width or row[x + n] != ""):
            row[x:x + n] = text[:n]
            canvas.styles[y][x:x + n] = [style] * n
            return x + n
    return canvas.put(x, y, text, style, max_width)


def remember(cache: dict, key, value, limit: int):
    """`cache[key] = value` in a memo bounded by clearing it when full; returns value.
    Callers look hits up inline (`cache.get(key)`): only a miss pays for this call."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value


def memo_canvas(cache: dict, key, draw, limit: int = 4):
    """A whole mode screen kept in `cache` (a RenderCache memo) under `key` until what it
    shows changes: the layout redraws a mode's screen every frame, drawing it costs ms."""
    hit = cache.get(key)
    if hit is None:
        hit = remember(cache, key, draw(), limit)
    return hit


class RowCache:
    """Rendered rows (chars, styles) by key, so rows that only move between frames (recent
    tokens, credit list) are drawn once. Bounded: cleared when it grows past `limit`.
    Rows are tuples: a canvas may share one, and nothing can write into it."""

    def __init__(self, limit: int = 4096):
        self.rows = {}
        self.limit = limit

    def get(self, key, width: int, draw) -> tuple:
        hit = self.rows.get(key)
        if hit is None:
            row = Canvas(width, 1)
            draw(row)
            hit = remember(self.rows, key, (tuple(row.chars[0]), tuple(row.styles[0])), self.limit)
        return hit


def paste_row(canvas: Canvas, y: int, row: tuple) -> None:
    """Copy a cached full-width row into canvas row y."""
    if 0 <= y < canvas.height:
        canvas.chars[y][:] = row[0]
        canvas.styles[y][:] = row[1]


def share_row(canvas: Canvas, y: int, row: tuple) -> None:
    """Make canvas row y the cached row itself (no copy). Only for rows nothing writes to
    afterwards (cached rows are tuples, so a write fails): canvases are read-only once
    returned, and shared rows let the layout and the frame diff see unchanged rows by
    identity."""
    if 0 <= y < canvas.height and len(row[0]) == canvas.width:
        canvas.chars[y] = row[0]
        canvas.styles[y] = row[1]
    else:
        paste_row(canvas, y, row)


def put_glyphs(canvas: Canvas, x: int, y: int, glyphs: Sequence[str], styles: Sequence[Style]) -> int:
    """Slice-assign width-1 glyphs with their styles (no sanitising: trusted glyphs only)."""
    n = min(len(glyphs), canvas.width - x)
    if n <= 0 or y < 0 or y >= canvas.height:
        return x
    canvas.chars[y][x:x + n] = glyphs[:n]
    canvas.styles[y][x:x + n] = styles[:n]
    return x + n


def age(state, batch_index: int, now: float) -> Optional[float]:
    """Seconds since the shown batch row's latest decode event arrived (None: none yet)."""
    t = state.decode_at.get(batch_index)
    return None if t is None else max(0.0, now - t)


def message(canvas: Canvas, y: int, text: str, theme) -> None:
    """A dimmed note (no data yet, not measured), cut with an ellipsis when narrow."""
    put(canvas, 1, y, truncate(text, max(canvas.width - 2, 0)), theme.na)


def _title_rows() -> RowCache:
    return RowCache(limit=1024)


def open_panel(state, view, width: int, height: int):
    """A blank panel canvas, the batch row the view shows, and that row's latest decode."""
    b = view.batch_index % state.batch_size()
    return Canvas(width, height), b, state.decode_for(b)


MESH_AXES = ("data", "fsdp", "tensor")


def fmt_scale(run) -> str:
    """A run's devices, mesh and processes, e.g. "4 · data 2 fsdp 2" or "8 · data 4 fsdp 2 ·
    2 procs"; "" for one device in one process (nothing to say). Axes of size 1 are left out."""
    if run is None:
        return ""
    devices, procs = int(run.device_count), int(run.process_count)
    if devices <= 1 and procs <= 1:
        return ""
    axes = " ".join(f"{a} {int(n)}" for a, n in zip(MESH_AXES, run.mesh_shape) if int(n) > 1)
    return " · ".join(x for x in (str(devices), axes, f"{procs} procs" if procs > 1 else "") if x)

