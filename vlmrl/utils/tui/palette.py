"""Colours, glyph ramps and the precomputed styles every panel draws with.

Meaning is always carried by glyphs (the ░▒▓█ ramp, signed bars, `⚡` labels); colour only
adds to it, so `Palette(color=False)` (NO_COLOR, dumb terminals) loses no information.
Styles are built once here so panels never construct Style objects per cell.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

from vlmrl.utils.tui.canvas import RGB, Style

# Intensity ramp at 0.25 steps: value < 0.25 ░, < 0.5 ▒, < 0.75 ▓, else █.
RAMP = "░▒▓█"
# Eighth-block ramp for sparklines and the small vertical probability bars.
SPARK = "▁▂▃▄▅▆▇█"
# Horizontal bars: full cell and the partial left-aligned eighths.
BAR_FULL = "█"
BAR_EIGHTHS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")
NOT_MEASURED = "·"  # a heatmap cell whose value was not measured (NaN)

YELLOW: RGB = (255, 215, 0)
GREEN: RGB = (80, 220, 100)
CYAN: RGB = (0, 215, 255)
RED: RGB = (255, 95, 95)
MAGENTA: RGB = (215, 135, 255)
WHITE: RGB = (235, 235, 235)
GREY: RGB = (140, 140, 140)
DARK: RGB = (90, 90, 90)
TITLE: RGB = (135, 175, 255)
# Heat colours for the four ramp levels (cool to hot), and the flash colour for > 0.75.
HEAT: Tuple[RGB, ...] = ((40, 70, 140), (60, 140, 200), (240, 170, 40), (255, 80, 40))
HEAT_FLASH: RGB = (255, 255, 160)


def ramp_index(value: float) -> int:
    """Ramp level 0..3 of a value in [0, 1] (clipped); NaN is level -1 (not measured)."""
    if value != value:  # NaN
        return -1
    if value < 0.25:
        return 0
    if value < 0.5:
        return 1
    if value < 0.75:
        return 2
    return 3


def ramp_glyph(value: float) -> str:
    """The ░▒▓█ glyph of a value, or `·` when it was not measured (NaN)."""
    i = ramp_index(value)
    return NOT_MEASURED if i < 0 else RAMP[i]


def spark_glyph(value: float, lo: float = 0.0, hi: float = 1.0) -> str:
    """One ▁..█ glyph for value scaled into [lo, hi]; a space when not finite."""
    if not math.isfinite(value):
        return " "
    span = hi - lo
    frac = 0.5 if span <= 0 else (value - lo) / span
    i = int(frac * len(SPARK))
    return SPARK[min(max(i, 0), len(SPARK) - 1)]


def sparkline(values: Sequence[float], width: int, scale: Optional[Tuple[float, float]] = None) -> str:
    """The last `width` values as ▁..█ glyphs, scaled to `scale` (lo, hi) when every value
    lies in it (a fixed scale: a flat 0.2 stays low), else to their own min..max."""
    vals = [float(v) for v in values[-width:] if v is not None]
    finite = [v for v in vals if math.isfinite(v)]
    if not finite or width <= 0:
        return ""
    lo, hi = min(finite), max(finite)
    if scale is not None and scale[0] <= lo and hi <= scale[1]:
        lo, hi = scale
    return "".join(spark_glyph(v, lo, hi) for v in vals)


def hbar(frac: float, width: int) -> str:
    """A left-aligned bar of `width` cells filled to `frac` with eighth-cell precision."""
    if width <= 0:
        return ""
    if not math.isfinite(frac):
        frac = 0.0
    eighths = int(round(min(max(frac, 0.0), 1.0) * width * 8))
    full, part = divmod(eighths, 8)
    text = BAR_FULL * full + BAR_EIGHTHS[part]
    return text + " " * (width - len(text))


class Palette:
    """Precomputed styles; `.color` is False under NO_COLOR (then glyphs carry meaning).
    `.depth` is the terminal's colour depth ("truecolor", "256", "16", "none"): the styles
    are RGB at every depth (the frame encoder lowers them), but a panel whose colours must
    stay apart after lowering (the image view's heat) picks them by it."""

    def __init__(self, color: bool = True, depth: Optional[str] = None):
        self.color = bool(color)
        self.depth = depth or ("truecolor" if self.color else "none")
        c = self._fg
        self.plain = Style()
        self.title = Style(fg=c(TITLE), bold=True)
        self.rule = Style(fg=c(DARK))
        self.label = Style(fg=c(GREY))
        self.value = Style(fg=c(WHITE), bold=True)
        self.dim = Style(fg=c(DARK), dim=not self.color)
        self.na = Style(fg=c(DARK), dim=not self.color)
        self.token = Style(fg=c(CYAN), bold=True)
        self.good = Style(fg=c(GREEN))
        self.bad = Style(fg=c(RED))
        self.vision = Style(fg=c(MAGENTA))
        self.warn = Style(fg=c(YELLOW), bold=True)
        # Flashing indicators: "on" phase and "off" phase. Without colour the on phase is
        # reverse video, so the flash stays visible and the text never changes.
        self.active_on = Style(fg=c(YELLOW), bold=True, reverse=not self.color)
        self.write_on = Style(fg=c(GREEN), bold=True, reverse=not self.color)
        self.sampling_on = Style(fg=c(CYAN), bold=True, reverse=not self.color)
        self.active_off = Style(fg=c((150, 130, 0)))
        self.write_off = Style(fg=c((40, 120, 60)))
        self.sampling_off = Style(fg=c((0, 120, 150)))
        self.stage_lit = Style(fg=c(YELLOW), bold=True, reverse=True)
        self.stage_idle = Style(fg=c(GREY))
        self.heat = tuple(Style(fg=c(rgb)) for rgb in HEAT)
        # Same attributes as heat[3], so a flash toggle is a colour-only SGR (the encoder
        # sends `38;5;n` instead of a reset and full set); reverse video without colour.
        self.heat_flash = Style(fg=c(HEAT_FLASH), reverse=not self.color)
        self.bar_pos = Style(fg=c(GREEN))
        self.bar_neg = Style(fg=c(RED))
        self.bar_top_on = Style(fg=c(YELLOW), bold=True, reverse=not self.color)
        # charts view: this run, the compared run (dashed too), faint (raw under EMA, std band)
        self.chart_main = Style(fg=c(CYAN))
        self.chart_other = Style(fg=c(MAGENTA))
        self.chart_faint = Style(fg=c(DARK), dim=not self.color)
        self.help = Style(fg=c(WHITE), bg=c((30, 30, 50)) if self.color else None)
        self.footer = Style(fg=c(GREY), reverse=not self.color)
        self.footer_key = Style(fg=c(YELLOW), bold=True, reverse=not self.color)
        self.alert = Style(fg=c(RED), bold=True, reverse=not self.color)

    def _fg(self, rgb: RGB):
        return rgb if self.color else None

    def __repr__(self) -> str:
        return f"Palette(color={self.color})"


COLOR = Palette(color=True)
COLOR_256 = Palette(color=True, depth="256")
COLOR_16 = Palette(color=True, depth="16")
MONO = Palette(color=False)


def palette_for(color: bool, depth: Optional[str] = None) -> Palette:
    """The shared palette for colour on/off (NO_COLOR or a dumb terminal means off), of the
    terminal's colour depth when it is known."""
    if not color:
        return MONO
    return {"256": COLOR_256, "16": COLOR_16}.get(depth, COLOR)
