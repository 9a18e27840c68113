"""Colour depth of the terminal we draw on, and RGB lowered to what it can show.

Panels think in RGB (`canvas.Style`); the frame encoder asks this module for the SGR
parameters of a style at the detected depth. Depth only ever drops *colour*: under
NO_COLOR or TERM=dumb bold/reverse/underline stay and cursor movement is untouched (the
encoder writes its own cursor sequences, never blessed's, because blessed turns every
capability off under NO_COLOR).
"""
from __future__ import annotations

import functools
import io
import os
from typing import Mapping, Optional, Tuple

from vlmrl.errors import UsageError
from vlmrl.utils.tui.canvas import RGB, Style

TRUECOLOR = "truecolor"
COLOR256 = "256"
COLOR16 = "16"
NOCOLOR = "none"
DEPTHS = (TRUECOLOR, COLOR256, COLOR16, NOCOLOR)

# xterm's default 16-colour palette; used to pick the nearest of the 16 ANSI colours.
ANSI16: Tuple[RGB, ...] = (
    (0, 0, 0), (205, 0, 0), (0, 205, 0), (205, 205, 0),
    (0, 0, 238), (205, 0, 205), (0, 205, 205), (229, 229, 229),
    (127, 127, 127), (255, 0, 0), (0, 255, 0), (255, 255, 0),
    (92, 92, 255), (255, 0, 255), (0, 255, 255), (255, 255, 255),
)
_CUBE = (0, 95, 135, 175, 215, 255)


@functools.lru_cache(maxsize=16)
def _terminfo_colors(term: str) -> Optional[int]:
    """Colours terminfo reports for `term` (via blessed), or None when it cannot say."""
    try:
        import blessed

        t = blessed.Terminal(kind=term, stream=io.StringIO(), force_styling=True)
        n = int(t.number_of_colors)
        return n if n > 0 else None
    except Exception:  # missing terminfo entry, curses quirks: the caller falls back
        return None


def detect_color_depth(env: Optional[Mapping[str, str]] = None, terminfo=_terminfo_colors) -> str:
    """The depth to draw with: truecolor / 256 / 16 / none.

    NO_COLOR (present and non-empty) or TERM=dumb -> none; COLORTERM truecolor/24bit ->
    truecolor; otherwise terminfo's colour count (COLORTERM is rarely forwarded over ssh,
    TERM is); when terminfo does not know TERM, 256 if its name says so, else 16.
    """
    env = os.environ if env is None else env
    if env.get("NO_COLOR", ""):
        return NOCOLOR
    term = env.get("TERM", "") or ""
    if term == "dumb":
        return NOCOLOR
    if env.get("COLORTERM", "").lower() in ("truecolor", "24bit"):
        return TRUECOLOR
    n = terminfo(term) if term else None
    if n is None:  # an unknown terminal: the 16 ANSI colours every colour terminal has
        return COLOR256 if "256col" in term else COLOR16
    if n >= 1 << 24:
        return TRUECOLOR
    if n >= 256:
        return COLOR256
    if n >= 8:
        return COLOR16
    return NOCOLOR


@functools.lru_cache(maxsize=4096)
def rgb_to_256(rgb: RGB) -> int:
    """Nearest xterm-256 index (6x6x6 cube 16..231 or grey ramp 232..255)."""
    r, g, b = rgb

    def level(v: int) -> int:
        return 0 if v < 48 else 1 if v < 115 else (v - 35) // 40

    ci = (level(r), level(g), level(b))
    cube = tuple(_CUBE[i] for i in ci)
    grey_i = min(23, max(0, round(((r + g + b) / 3 - 8) / 10)))
    grey_v = 8 + 10 * grey_i

    def dist(c: Tuple[int, int, int]) -> int:
        return (c[0] - r) ** 2 + (c[1] - g) ** 2 + (c[2] - b) ** 2

    if dist((grey_v, grey_v, grey_v)) < dist(cube):
        return 232 + grey_i
    return 16 + 36 * ci[0] + 6 * ci[1] + ci[2]


@functools.lru_cache(maxsize=4096)
def rgb_to_16(rgb: RGB) -> int:
    """Nearest of the 16 ANSI colours (0..15) by squared RGB distance."""
    r, g, b = rgb
    best, best_d = 0, None
    for i, (cr, cg, cb) in enumerate(ANSI16):
        d = (cr - r) ** 2 + (cg - g) ** 2 + (cb - b) ** 2
        if best_d is None or d < best_d:
            best, best_d = i, d
    return best


def color_params(rgb: Optional[RGB], depth: str, background: bool) -> str:
    if rgb is None or depth == NOCOLOR:
        return ""
    r, g, b = (min(255, max(0, int(c))) for c in rgb)
    if depth == TRUECOLOR:
        return f"{48 if background else 38};2;{r};{g};{b}"
    if depth == COLOR256:
        return f"{48 if background else 38};5;{rgb_to_256((r, g, b))}"
    n = rgb_to_16((r, g, b))
    base = (40 if background else 30) if n < 8 else (100 if background else 90)
    return str(base + n % 8)


def sgr(style: Style, depth: str) -> str:
    """The full SGR sequence (reset first) that draws `style` at `depth`."""
    if depth not in DEPTHS:
        raise UsageError(f"unknown colour depth {depth!r}; expected one of {DEPTHS}")
    parts = ["0"]
    if style.bold:
        parts.append("1")
    if style.dim:
        parts.append("2")
    if style.underline:
        parts.append("4")
    if style.reverse:
        parts.append("7")
    fg = color_params(style.fg, depth, False)
    if fg:
        parts.append(fg)
    bg = color_params(style.bg, depth, True)
    if bg:
        parts.append(bg)
    return "\x1b[" + ";".join(parts) + "m"


def wants_color(depth: str) -> bool:
    return depth != NOCOLOR


def palette_for_depth(depth: str):
    """The panels' palette (`palette.py`) for this depth (`.color` False when depth is none)."""
    from vlmrl.utils.tui import palette

    return palette.palette_for(wants_color(depth), depth)
