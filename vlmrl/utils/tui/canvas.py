"""The cell grid every panel draws into, and the one place untrusted text is made safe.

A Canvas is rows of cells; each cell is one character (or "" for the right half of a
wide character) plus a Style. Rows are plain lists so whole-row comparison and slice
assignment run at C speed: the diff in `frame.py` compares rows first, cells second.
Panels never write to the terminal; they return or fill a Canvas.
"""
from __future__ import annotations

import functools
import unicodedata
from typing import NamedTuple, Optional, Tuple

import wcwidth

RGB = Tuple[int, int, int]


class Style(NamedTuple):
    """How a cell looks. Colours are RGB; the encoder lowers them to 256/16/none."""

    fg: Optional[RGB] = None
    bg: Optional[RGB] = None
    bold: bool = False
    dim: bool = False
    reverse: bool = False
    underline: bool = False


PLAIN = Style()


class Rect(NamedTuple):
    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height


# Bidi controls can reorder what follows them on screen, and other invisible format
# characters can hide text: both are shown as a visible stand-in.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# Clusters whose width wcwidth and terminals disagree on, shifting the rest of the row
# (measured in tmux 3.3: a ZWJ family is 2 cells there, 6 by wcwidth; a flag 2 vs 4; the
# Hangul fillers U+3164 / U+FFA0 are 2 / 1 vs 0). They are broken into parts whose width
# both agree on: a ZWJ sequence shows its emoji side by side, a flag its two letters, a
# filler U+FFFD.
_ZWJ = "\u200d"
_REGIONAL_A = 0x1F1E6  # regional indicator symbol letter A; Z is 0x1F1FF
_HANGUL_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")


@functools.lru_cache(maxsize=65536)
def _safe_char(ch: str) -> str:
    code = ord(ch)
    if ch == _ZWJ:
        return ""
    if _REGIONAL_A <= code <= _REGIONAL_A + 25:
        return chr(ord("A") + code - _REGIONAL_A)
    if ch in _HANGUL_FILLERS:
        return "\ufffd"
    if code < 0x20:
        return chr(0x2400 + code)  # control pictures: ␀..␟ (␛ for ESC)
    if code == 0x7F:
        return "\u2421"  # ␡
    if 0x80 <= code <= 0x9F:
        return "\ufffd"  # C1 controls (8-bit CSI, OSC, ...)
    if ch in _BIDI:
        return "\ufffd"
    cat = unicodedata.category(ch)
    if cat in ("Cs", "Co", "Cn"):
        return "\ufffd"
    if cat == "Cf":
        return "\ufffd"
    return ch


# Text memos hold only texts up to this many characters: a cache keyed on whole token
# texts otherwise keeps every long one it saw (1 MB tokens held 3.7 GB after stop()).
# At most maxsize x 64 characters per memo, and the common tokens are short.
MEMO_TEXT = 64


def text_memo(maxsize: int):
    """functools.lru_cache for a function whose first argument is a text, bounded in
    bytes as well as entries: calls with a text longer than MEMO_TEXT are not cached."""
    def wrap(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(text, *args):
            if len(text) > MEMO_TEXT:
                return fn(text, *args)
            return cached(text, *args)
        call.cache_clear = cached.cache_clear
        call.cache_info = cached.cache_info
        return call
    return wrap


@text_memo(maxsize=8192)
def sanitize(text: str) -> str:
    """Map every control, bidi override and unassigned code point to a visible stand-in.

    The result contains no C0/C1 control character, so no escape sequence in model or
    file text can ever reach the terminal.
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(_safe_char(ch) for ch in text)


@functools.lru_cache(maxsize=65536)
def char_width(ch: str) -> int:
    """Terminal cells of one (sanitised) character: 0, 1 or 2."""
    w = wcwidth.wcwidth(ch)
    return 1 if w < 0 else w


def text_width(text: str) -> int:
    """Cells the sanitised text takes, measured as the canvas lays it out."""
    text = sanitize(text)
    if text.isascii():
        return len(text)
    return sum(char_width(ch) for ch in text)


ELLIPSIS = "…"


def truncate(text: str, width: int, ellipsis: str = ELLIPSIS) -> str:
    """Sanitised text cut to at most `width` cells, with an ellipsis when cut."""
    text = sanitize(text)
    if text_width(text) <= width:
        return text
    if width <= 0:
        return ""
    out, used = [], 0
    limit = width - text_width(ellipsis)
    for ch in text:
        w = char_width(ch)
        if used + w > limit:
            break
        out.append(ch)
        used += w
    return "".join(out) + (ellipsis if limit >= 0 else "")


class Canvas:
    """A width x height grid of (char, Style) cells.

    `damage`, when set by whoever built this canvas from another one, is `(base, spans)`:
    every cell outside `spans` ({row: [(x0, x1), ...]}) is the same as in `base`, and
    rows absent from `spans` are `base`'s own row lists. The frame encoder then scans only
    those spans when `base` is the frame it last sent. Nothing else reads it.
    """

    __slots__ = ("width", "height", "chars", "styles", "damage")

    def __init__(self, width: int, height: int, style: Style = PLAIN):
        self.damage = None
        self.width = max(0, int(width))
        self.height = max(0, int(height))
        self.chars = [[" "] * self.width for _ in range(self.height)]
        self.styles = [[style] * self.width for _ in range(self.height)]

    def put(self, x: int, y: int, text: str, style: Style = PLAIN, max_width: Optional[int] = None) -> int:
        """Write sanitised text at (x, y), clipped to the canvas (and max_width); returns the next x.

        Text cut on the right ends in "…" (its last cell), so a cut word never reads as a
        whole one on a narrow terminal."""
        if y < 0 or y >= self.height or x >= self.width or not text:
            return x
        text = sanitize(text)
        limit = self.width if max_width is None else min(self.width, x + max_width)
        row_c, row_s = self.chars[y], self.styles[y]
        if text.isascii():
            if x < 0:
                text, x = text[-x:], 0
            n = min(len(text), limit - x)
            if n <= 0:
                return x
            row_c[x:x + n] = text[:n]
            row_s[x:x + n] = [style] * n
            if n < len(text) and text[n - 1:n + 1].strip():  # cut, and not at a space
                row_c[x + n - 1] = ELLIPSIS
            self._mend_left(x, y)
            self._mend_right(x + n, y)
            return x + n
        start = x
        for ch in text:
            w = char_width(ch)
            if w == 0:
                # combining mark: attach to the previous cell so it never takes a column
                if x - 1 >= 0 and x - 1 >= start and x - 1 < limit:
                    prev = x - 1 if row_c[x - 1] != "" else x - 2
                    if prev >= 0:
                        row_c[prev] += ch
                continue
            if x + w > limit:
                if 0 <= x < limit:  # a wide char did not fit: the mark takes its free cell
                    row_c[x], row_s[x] = ELLIPSIS, style
                    x += 1
                else:
                    self._mark_cut(start, x, y, ch)
                break
            if x < 0 < x + w:
                # a wide char cut by the left edge: its visible half becomes a blank
                row_c[0] = " "
                row_s[0] = style
            elif x >= 0:
                row_c[x] = ch
                row_s[x] = style
                if w == 2:
                    row_c[x + 1] = ""
                    row_s[x + 1] = style
            x += w
        self._mend_left(max(start, 0), y)
        self._mend_right(x, y)
        return x

    def _mark_cut(self, start: int, x: int, y: int, next_ch: str) -> None:
        """The cell before x (where a cut text stopped) becomes "…", unless the cut fell
        on a space (nothing of a word is lost there)."""
        row = self.chars[y]
        last = x - 1
        if last < max(start, 0) or last >= self.width:
            return
        if row[last] == "":  # right half of a wide char: the mark takes both cells
            if last - 1 < max(start, 0):
                return
            row[last - 1], row[last] = ELLIPSIS, " "
            self.styles[y][last] = self.styles[y][last - 1]
        elif row[last].strip() or next_ch.strip():
            row[last] = ELLIPSIS

    def _mend_left(self, x: int, y: int) -> None:
        # Overwriting the right half of a wide char leaves its left half dangling.
        row = self.chars[y]
        if 0 < x < self.width and row[x] != "" and x - 1 >= 0 and char_width(row[x - 1][:1] or " ") == 2:
            row[x - 1] = " "

    def _mend_right(self, x: int, y: int) -> None:
        row = self.chars[y]
        while 0 <= x < self.width and row[x] == "":
            row[x] = " "
            x += 1

    def fill(self, rect: Rect, char: str = " ", style: Style = PLAIN) -> None:
        char = sanitize(char)[:1] or " "
        if char_width(char) != 1:
            char = " "
        x0, x1 = max(rect.x, 0), min(rect.right, self.width)
        if x1 <= x0:
            return
        for y in range(max(rect.y, 0), min(rect.bottom, self.height)):
            self.chars[y][x0:x1] = [char] * (x1 - x0)
            self.styles[y][x0:x1] = [style] * (x1 - x0)
            self._mend_left(x0, y)
            self._mend_right(x1, y)

    def blit(self, other: "Canvas", x: int, y: int) -> None:
        """Copy another canvas in with its top-left at (x, y), clipped."""
        x0, x1 = max(x, 0), min(x + other.width, self.width)
        if x1 <= x0:
            return
        for oy in range(other.height):
            ty = y + oy
            if 0 <= ty < self.height:
                self.chars[ty][x0:x1] = other.chars[oy][x0 - x:x1 - x]
                self.styles[ty][x0:x1] = other.styles[oy][x0 - x:x1 - x]
                self._mend_left(x0, ty)
                self._mend_right(x1, ty)
                if self.chars[ty][x0] == "":
                    self.chars[ty][x0] = " "

    def row_text(self, y: int) -> str:
        return "".join(self.chars[y])

    def text(self) -> str:
        return "\n".join(self.row_text(y) for y in range(self.height))

    def copy(self) -> "Canvas":
        out = Canvas.__new__(Canvas)
        out.damage = None  # the copy is about to be written to
        out.width, out.height = self.width, self.height
        out.chars = [list(r) for r in self.chars]
        out.styles = [list(r) for r in self.styles]
        return out
