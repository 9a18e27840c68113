"""The numbers behind the charts view, apart from how they are drawn.

`chart_model` turns the training history (one `HistoryPoint` per update, exactly as the
TrainingState logged it) into what one chart plots: the steps and values of each line,
the value range of the axes, and the dot grid of the plot (`raster`). Braille cells hold
2 x 4 dots (`braille`), so a chart of C x R cells plots 2C x 4R pixels. Everything here is
a pure function of its arguments; a test can read the plotted values back from the model
or decode them from the drawn cells (`unbraille`).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np


class Series(NamedTuple):
    """One chart: which HistoryPoint field it plots and how it is called."""

    key: str  # HistoryPoint field
    title: str
    band: Optional[str] = None  # HistoryPoint field of a +- band around the line (reward std)


# In the order they are dropped last-first when the terminal cannot hold them all.
SERIES = (
    Series("reward_mean", "reward mean ± std", band="reward_std"),
    Series("kl", "KL to reference"),
    Series("loss", "loss"),
    Series("policy_entropy", "policy entropy"),
    Series("clip_fraction", "clip fraction"),
    Series("grad_norm", "grad norm"),
    Series("learning_rate", "learning rate"),
    Series("tokens_per_sec", "rollout tok/s"),
    Series("update_tokens_per_sec", "update tok/s"),
)
# EMA smoothing weights the `s` key cycles through (0: off). Debiased as TensorBoard does,
# so the first points are not pulled towards zero.
SMOOTHING = (0.0, 0.6, 0.9)


class Line(NamedTuple):
    steps: Tuple[int, ...]
    values: Tuple[float, ...]  # as logged (finite ones only: a step without the scalar is a gap)


class ChartModel(NamedTuple):
    series: Series
    main: Line  # this run, as logged
    shown: Tuple[float, ...]  # what the main line plots: `main.values`, or their EMA
    band: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]  # (low, high) per main step
    other: Optional[Line]  # the compared run, as logged
    other_shown: Tuple[float, ...]
    x_range: Tuple[int, int]  # first step and the step the x axis ends at (axis_end)
    y_range: Tuple[float, float]  # bottom and top of the y axis


def line(history: Sequence, key: str) -> Line:
    """The steps and values of one scalar, skipping updates where it was not logged."""
    steps, values = [], []
    for p in history:
        v = getattr(p, key)
        if v is not None and math.isfinite(v):
            steps.append(int(p.step))
            values.append(float(v))
    return Line(tuple(steps), tuple(values))


def ema(values: Sequence[float], weight: float) -> Tuple[float, ...]:
    """Debiased exponential moving average: s_t = w s_{t-1} + (1-w) x_t, divided by 1 - w^t."""
    if weight <= 0:
        return tuple(values)
    out, acc = [], 0.0
    for i, x in enumerate(values, 1):
        acc = weight * acc + (1.0 - weight) * x
        out.append(acc / (1.0 - weight ** i))
    return tuple(out)


def chart_model(series: Series, history: Sequence, other: Optional[Sequence] = None,
                smoothing: float = 0.0) -> Optional[ChartModel]:
    """What one chart plots, or None when neither run logged this scalar."""
    main = line(history, series.key)
    oth = line(other, series.key) if other is not None else None
    if not main.steps and not (oth and oth.steps):
        return None
    band = None
    if series.band is not None and main.steps:
        by_step = {int(p.step): getattr(p, series.band) for p in history}
        half = [by_step.get(s) for s in main.steps]
        if all(h is not None and math.isfinite(h) for h in half):
            band = (tuple(v - h for v, h in zip(main.values, half)), tuple(v + h for v, h in zip(main.values, half)))
    shown = ema(main.values, smoothing)
    other_shown = ema(oth.values, smoothing) if oth is not None else ()
    steps = main.steps + (oth.steps if oth is not None else ())
    ys = list(shown) + list(other_shown) + (list(band[0]) + list(band[1]) if band else [])
    if smoothing > 0:
        ys += list(main.values) + (list(oth.values) if oth is not None else [])
    return ChartModel(series, main, shown, band, oth if oth and oth.steps else None, other_shown,
                      (min(steps), axis_end(max(steps))), _y_range(ys))


# Ends the x axis may take (times a power of ten): the axis grows in these steps rather than
# with every update, so a new update adds a dot instead of redrawing every chart (one
# rescale redrew ~1/3 of a repaint: scripts/bench_rl_views.py), leaving at most 1/4 empty.
NICE = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def axis_end(last_step: int) -> int:
    """The step the x axis ends at: `last_step` itself up to 10, then the next NICE value."""
    if last_step <= 10:
        return int(last_step)
    scale = 10 ** int(math.floor(math.log10(last_step)))
    return int(next(m * scale for m in NICE if m * scale >= last_step))


def _y_range(values) -> Tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.1 or 1.0  # a flat line sits in the middle of a range around it
    return lo - pad, hi + pad


def to_pixels(steps, values, x_range, y_range, px_w: int, px_h: int) -> Tuple[np.ndarray, np.ndarray]:
    """Float pixel coordinates (x right, y down from the top) of data points."""
    s0, s1 = x_range
    lo, hi = y_range
    xs = np.asarray(steps, np.float64)
    xs = np.zeros_like(xs) if s1 == s0 else (xs - s0) / (s1 - s0) * (px_w - 1)
    ys = (hi - np.asarray(values, np.float64)) / (hi - lo) * (px_h - 1)
    return xs, ys


def raster(xs: np.ndarray, ys: np.ndarray, px_w: int, px_h: int, dash: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """bool [px_h, px_w]: the polyline through the points, continuous across columns.

    Each pixel column between the first and last point lights the dots from the line's
    height at its centre halfway to its neighbours' (so steep segments stay joined), and
    every data point's own dot. `dash` (on, period) lights only the columns whose index
    mod period is below `on` (dashed lines tell runs apart without colour); data points
    always show."""
    grid = np.zeros((px_h, px_w), bool)
    if len(xs) == 0:
        return grid
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    c0, c1 = int(round(xs[0])), int(round(xs[-1]))
    cols = np.arange(c0, c1 + 1)
    yc = np.interp(cols, xs, ys)
    lo, hi = yc.copy(), yc.copy()
    if len(cols) > 1:
        mid = (yc[1:] + yc[:-1]) / 2.0
        lo[1:], hi[1:] = np.minimum(lo[1:], mid), np.maximum(hi[1:], mid)
        lo[:-1], hi[:-1] = np.minimum(lo[:-1], mid), np.maximum(hi[:-1], mid)
    at = np.rint(xs).astype(int) - c0
    np.minimum.at(lo, at, ys)
    np.maximum.at(hi, at, ys)
    rows = np.arange(px_h)[:, None]
    lit = (rows >= np.rint(lo)[None, :]) & (rows <= np.rint(hi)[None, :])
    if dash is not None:
        keep = (cols % dash[1]) < dash[0]
        keep[at] = True  # data points always show
        lit &= keep[None, :]
    grid[:, c0:c1 + 1] = lit
    return grid


def band(xs: np.ndarray, y_top: np.ndarray, y_bottom: np.ndarray, px_w: int, px_h: int) -> np.ndarray:
    """bool [px_h, px_w]: a sparse texture (every 4th column, every 2nd row) filling the
    area between two curves, so a band reads as a shaded area, not as more lines."""
    grid = np.zeros((px_h, px_w), bool)
    if len(xs) == 0:
        return grid
    order = np.argsort(xs, kind="stable")
    xs = xs[order]
    cols = np.arange(int(round(xs[0])), int(round(xs[-1])) + 1)
    top, bottom = np.interp(cols, xs, y_top[order]), np.interp(cols, xs, y_bottom[order])
    rows = np.arange(px_h)[:, None]
    lit = (rows >= np.rint(np.minimum(top, bottom))) & (rows <= np.rint(np.maximum(top, bottom)))
    lit &= (rows % 2 == 0) & (cols % 4 == 0)[None, :]
    grid[:, cols] = lit
    return grid


# Dot bit of braille pattern U+2800 + bits for (row 0..3, column 0..1) inside a cell.
DOT_BITS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], np.int64)
BRAILLE = tuple(chr(0x2800 + i) for i in range(256))


def braille(grid: np.ndarray) -> np.ndarray:
    """int [px_h / 4, px_w / 2] braille bit patterns of a dot grid."""
    h, w = grid.shape
    cells = grid.reshape(h // 4, 4, w // 2, 2)
    return np.einsum("rycx,yx->rc", cells.astype(np.int64), DOT_BITS)


def unbraille(chars: Sequence[Sequence[str]]) -> np.ndarray:
    """The dot grid back from rows of braille characters (anything else: no dots)."""
    rows = len(chars)
    cols = max((len(r) for r in chars), default=0)
    grid = np.zeros((rows * 4, cols * 2), bool)
    for r, row in enumerate(chars):
        for c, ch in enumerate(row):
            code = ord(ch[:1] or " ") - 0x2800
            if 0 < code < 256:
                grid[r * 4:r * 4 + 4, c * 2:c * 2 + 2] = (code & DOT_BITS) != 0
    return grid


def fmt_axis(value: float) -> str:
    """A y-axis label in at most 9 cells: 4 significant digits, k/M for large, e for tiny."""
    if not math.isfinite(value):
        return "n/a"
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 1e6:
        return f"{value / 1e6:.4g}M"
    if a >= 1e4:
        return f"{value / 1e3:.4g}k"
    if a < 1e-3:
        return f"{value:.3e}".replace("e-0", "e-")  # 6.906e-4
    return f"{value:.4g}"
