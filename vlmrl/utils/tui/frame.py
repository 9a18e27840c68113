"""Turn the next Canvas into the bytes that move the terminal from the previous one.

Only changed cells are sent: rows are compared first (list equality runs in C), cells
only inside rows that differ. Each changed run gets its own CSI cursor move (never
blessed's: under NO_COLOR blessed returns '' for every capability) and SGR is sent only
when the style changes, lowered to the terminal's colour depth. The whole frame is one
bytes object inside synchronized-output marks, with autowrap off so writing the last
column can never scroll. The first frame and the first after a resize clear the screen
once and repaint everything; later frames never clear.

Cells arrive sanitised by `Canvas.put`, but panels may touch `.chars` directly, so each
run is checked again here: no control character from a cell can reach the terminal, and
a malformed wide-char pair is drawn as spaces instead of shifting the row.
"""
from __future__ import annotations

from typing import List, Optional

from vlmrl.errors import UsageError
from vlmrl.utils.tui import theme as _theme
from vlmrl.utils.tui.canvas import Canvas, char_width, sanitize

BSU = "\x1b[?2026h"  # begin synchronized update
ESU = "\x1b[?2026l"  # end synchronized update
AUTOWRAP_OFF = "\x1b[?7l"
HIDE_CURSOR = "\x1b[?25l"
CLEAR = "\x1b[0m\x1b[H\x1b[2J"

# Unchanged cells between two changed runs are rewritten instead of moving the cursor
# when the gap is shorter than a cursor move costs (ESC [ row ; col H is 6-10 bytes).
MERGE_GAP = 4


def cup(x: int, y: int) -> str:
    """Cursor to column x, row y (0-based)."""
    return f"\x1b[{y + 1};{x + 1}H"


class FrameEncoder:
    """Keeps the canvas last sent and encodes the next one as a minimal update.

    The encoder keeps a reference to each canvas it encodes: hand it a fresh canvas per
    frame (as `layout.render_screen` does) and do not mutate it afterwards.
    """

    def __init__(self, depth: str = _theme.COLOR256, sync: bool = True):
        if depth not in _theme.DEPTHS:
            raise UsageError(f"unknown colour depth {depth!r}; expected one of {_theme.DEPTHS}")
        self.depth = depth
        self.sync = sync
        self.prev: Optional[Canvas] = None
        self._moves: dict = {}  # (from style, to style) -> SGR
        # Characters already checked to be printable, safe and exactly one cell wide: a
        # run made only of these (one per cell) skips the per-cell path. Bounded (see
        # _cells_text) so odd text cannot grow it.
        self._one_cell = set(" ")
        self._repaint = False

    def invalidate(self) -> None:
        """Forget what is on screen: the next frame clears once and repaints everything."""
        self.prev = None

    def repaint(self) -> None:
        """Redraw every cell next frame without clearing: heals the screen after stray
        output (a library printing to the terminal) with no blank flash."""
        self._repaint = True

    def _transition(self, cur, new) -> str:
        """Shortest SGR from style `cur` (None: unknown) to `new`: only the colours that
        change when the attributes stay, a full reset-and-set otherwise; "" when both
        lower to the same thing at this depth."""
        if len(self._moves) > 4096:
            self._moves.clear()
        full = _theme.sgr(new, self.depth)
        if cur is None:
            out = full
        elif _theme.sgr(cur, self.depth) == full:
            out = ""
        elif (cur.bold, cur.dim, cur.underline, cur.reverse) == (new.bold, new.dim, new.underline, new.reverse):
            parts = []
            for a, b, default, bg in ((cur.fg, new.fg, "39", False), (cur.bg, new.bg, "49", True)):
                pa = _theme.color_params(a, self.depth, bg)
                pb = _theme.color_params(b, self.depth, bg)
                if pa != pb:
                    parts.append(pb or default)
            out = "\x1b[" + ";".join(parts) + "m" if parts else ""
        else:
            out = full
        self._moves[(id(cur), id(new))] = (cur, new, out)
        return out

    def encode(self, canvas: Canvas) -> bytes:
        """Bytes for this frame; b"" when nothing changed (then nothing need be written)."""
        prev = self.prev
        if canvas is prev and not self._repaint:
            return b""  # the layout hands back the very same screen when nothing changed
        clear = prev is None or prev.width != canvas.width or prev.height != canvas.height
        full = clear or self._repaint
        self._repaint = False
        out: List[str] = []
        self._cur = None  # SGR state is unknown at the start of each frame
        width = canvas.width
        nch, nst = canvas.chars, canvas.styles
        if full:
            if clear:
                out.append(CLEAR)
            for y in range(canvas.height):
                self._emit(out, nch[y], nst[y], 0, width, y, width)
        else:
            pch, pst = prev.chars, prev.styles
            damage = canvas.damage
            if damage is not None and damage[0] is prev:
                # built from the frame on screen: only the spans it names can differ
                for y, spans in sorted(damage[1].items()):
                    for x0, x1 in sorted(spans):
                        for s, e in _changed_runs(pch[y], pst[y], nch[y], nst[y], width, x0, x1):
                            self._emit(out, nch[y], nst[y], s, e, y, width)
            else:
                for y in range(canvas.height):
                    nc, pc = nch[y], pch[y]
                    ns, ps = nst[y], pst[y]
                    if (nc is pc or nc == pc) and (ns is ps or ns == ps):
                        continue
                    for s, e in _changed_runs(pc, ps, nc, ns, width):
                        self._emit(out, nc, ns, s, e, y, width)
        self.prev = canvas
        if not out:
            return b""
        head = (BSU if self.sync else "") + HIDE_CURSOR + AUTOWRAP_OFF
        tail = "\x1b[0m" + (ESU if self.sync else "")
        return (head + "".join(out) + tail).encode("utf-8", "replace")

    def _emit(self, out: List[str], chars, styles, s: int, e: int, y: int, width: int) -> None:
        out.append(cup(s, y))
        cur = self._cur
        seg = chars[s:e]
        text = "".join(seg)
        # the common run: one safe one-cell char per cell; its pieces are slices of `text`
        simple = len(text) == e - s and "" not in seg and (
            (text.isascii() and text.isprintable()) or self._one_cell.issuperset(text))
        x = s
        while x < e:
            st = styles[x]
            # extent of this style inside the run
            j = x + 1
            if simple:
                while j < e and (styles[j] is st or styles[j] == st):
                    j += 1
            else:
                # never split a wide char from its right half: that half would be drawn alone
                while j < e and (styles[j] is st or chars[j] == "" or styles[j] == st):
                    j += 1
            if st is not cur:
                # keyed by identity (cheap to hash); the entry holds both styles, so
                # their ids cannot be reused while it exists
                hit = self._moves.get((id(cur), id(st)))
                sg = hit[2] if hit is not None else self._transition(cur, st)
                if sg:
                    out.append(sg)
                cur = st
            out.append(text[x - s:j - s] if simple else _cells_text(chars, x, j, width, self._one_cell))
            x = j
        self._cur = cur


ONE_CELL_MAX = 8192  # one-cell characters an encoder remembers


def _cells_text(chars, s: int, e: int, width: int, one_cell: set) -> str:
    """Text that draws cells [s, e) exactly e - s columns wide, with nothing unsafe in it.
    `one_cell`: the encoder's known one-cell characters (grown here)."""
    seg = chars[s:e]
    text = "".join(seg)
    if len(text) == e - s and "" not in seg:  # then every cell holds exactly one char
        if (text.isascii() and text.isprintable()) or one_cell.issuperset(text):
            return text
    parts = []
    x = s
    while x < e:
        c = chars[x]
        if c == "":
            # right half of a wide char: drawn by its left half, unless that is missing
            if x == s or char_width((chars[x - 1] or " ")[0]) != 2:
                parts.append(" ")
            x += 1
            continue
        safe = sanitize(c)
        w = char_width(safe[0])
        if w == 2:
            if x + 1 < width and chars[x + 1] == "":
                parts.append(safe)
                x += 2
                continue
            parts.append(" ")  # wide char without its right half: would shift the row
        elif w == 0:
            parts.append(" ")  # a cell cannot start with a zero-width character
        else:
            parts.append(safe)
            if len(c) == 1 and safe == c and len(one_cell) < ONE_CELL_MAX:
                one_cell.add(c)
        x += 1
    return "".join(parts)


# Rows are compared in chunks (slice equality runs in C); only chunks that differ are
# scanned cell by cell, so a row where one heatmap cell changed costs a few slices.
CHUNK = 16


def _changed_runs(pc, ps, nc, ns, width: int, lo: int = 0, hi: Optional[int] = None) -> List[tuple]:
    """[(start, end)) runs of changed cells in one row (within columns [lo, hi)), merged
    across short gaps, never splitting a wide character (on either the old or the new screen)."""
    runs = []
    start = last = -1
    hi = width if hi is None or hi > width else hi
    for c0 in range(lo, hi, CHUNK):
        c1 = c0 + CHUNK if c0 + CHUNK < hi else hi
        if nc[c0:c1] == pc[c0:c1] and ns[c0:c1] == ps[c0:c1]:
            continue
        for x in range(c0, c1):
            if nc[x] != pc[x] or (ns[x] is not ps[x] and ns[x] != ps[x]):
                if start < 0:
                    start = x
                elif x - last > MERGE_GAP:
                    runs.append([start, last + 1])
                    start = x
                last = x
    if start >= 0:
        runs.append([start, last + 1])
    for r in runs:
        s, e = r
        # start on a right half (new or old screen): begin at its left half
        while s > 0 and (nc[s] == "" or pc[s] == ""):
            s -= 1
        # end inside a wide char of the new screen: include its right half
        if e < width and nc[e] == "":
            e += 1
        r[0], r[1] = s, e
    return [tuple(r) for r in runs]


def full_bytes(canvas: Canvas, depth: str = _theme.COLOR256, sync: bool = True) -> bytes:
    """A full repaint of `canvas` (what a fresh encoder sends first)."""
    return FrameEncoder(depth, sync).encode(canvas)
