"""Numbers behind the image view (numpy only): which attention a token gave each patch,
and the image resampled and blended with it, two pixels per terminal cell.

Pure functions of their arguments; `panels/image.py` draws what they return.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import List, Optional, Sequence, Tuple

import numpy as np

from vlmrl.utils.tui.palette import HEAT

# The overlay's colour ramp (cool to hot, the heatmap's own colours) and how much of it a
# pixel takes: enough to read the heat, little enough to still see the image under it.
BLEND = 0.5
_STOPS = np.asarray(HEAT, np.float64)  # [4, 3]
# Grey ramp for the image without colour (NO_COLOR): dark to light.
GREY_RAMP = " .:-=+*#%@"


def token_values(attention: np.ndarray, share: np.ndarray, layer: Optional[int]) -> Tuple[np.ndarray, float]:
    """(float64 [N] weight on each image token, share on the image) for one layer, or the
    mean over layers when `layer` is None; heads are already averaged on the device."""
    att = np.asarray(attention, np.float64)
    sh = np.asarray(share, np.float64)
    if layer is None:
        return att.mean(axis=0), float(sh.mean())
    return att[layer], float(sh[layer])


def pooled_shape(grid: tuple, pool: int) -> Tuple[int, int, int]:
    """(t, h, w) of a merged grid pooled pool x pool per frame (ceil at the edges)."""
    t, h, w = (int(x) for x in grid)
    return t, -(-h // pool), -(-w // pool)


def split_grids(values: np.ndarray, grids: Sequence[tuple], pool: int = 1) -> List[Optional[np.ndarray]]:
    """Per image, its [h', w'] grid of cell values (the merged grid pooled pool x pool,
    summed over the t frames), from the row's cells in order; None for an image whose
    cells were not all sent."""
    out, at = [], 0
    for grid in grids:
        t, h, w = pooled_shape(grid, pool)
        part = values[at:at + t * h * w]
        out.append(part.reshape(t, h, w).sum(axis=0) if part.size == t * h * w else None)
        at += t * h * w
    return out


def fit(size_hw: Tuple[int, int], cols: int, rows: int) -> Tuple[int, int]:
    """(cells wide, cells tall) to draw an image of size (H, W) pixels in at most cols x rows
    cells, two pixel rows a cell (cells are about twice as tall as wide: pixels stay square)."""
    h, w = max(1, int(size_hw[0])), max(1, int(size_hw[1]))
    scale = min(cols / w, 2 * rows / h)
    return max(1, min(cols, int(w * scale))), max(1, min(rows, int(h * scale / 2)))


def resample(pixels: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Nearest-pixel resample of uint8 [h, w, 3] to [out_h, out_w, 3] (pixel centres)."""
    h, w = pixels.shape[:2]
    ys = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(int), h - 1)
    xs = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(int), w - 1)
    return pixels[ys][:, xs]


def patch_map(cells_hw: np.ndarray, out_h: int, out_w: int, merged_hw: Optional[Tuple[int, int]] = None,
              pool: int = 1) -> np.ndarray:
    """The [h', w'] cell values spread over [out_h, out_w] pixels: each pixel takes the value
    of the cell holding the merged patch its centre falls in (merged_hw: the merged grid the
    cells pool `pool` x `pool`; default the cells' own shape)."""
    mh, mw = cells_hw.shape if merged_hw is None else merged_hw
    ys = np.minimum(((np.arange(out_h) + 0.5) * mh / out_h).astype(int), mh - 1) // pool
    xs = np.minimum(((np.arange(out_w) + 0.5) * mw / out_w).astype(int), mw - 1) // pool
    return cells_hw[np.minimum(ys, cells_hw.shape[0] - 1)][:, np.minimum(xs, cells_hw.shape[1] - 1)]


def heat_rgb(levels: np.ndarray) -> np.ndarray:
    """float64 [..., 3] colours of values in [0, 1] along the heat ramp (linear between stops)."""
    x = np.clip(np.nan_to_num(levels, nan=0.0), 0.0, 1.0) * (len(_STOPS) - 1)
    i = np.minimum(x.astype(int), len(_STOPS) - 2)
    f = (x - i)[..., None]
    return _STOPS[i] * (1 - f) + _STOPS[i + 1] * f


# Below truecolor the encoder lowers every colour to the nearest of 256 or 16, and half a
# heat tint over a grey or dark image collapses to one or two codes (at 256 colours 5-7 of
# the 9 levels stay apart, at 16 colours 1-3). There the heat takes the legend's four levels
# (quarters of the largest weight, the ░▒▓█ thresholds), each the colour of one HEAT stop,
# laid on with this much weight: over grey, brownish and bluish images of every brightness
# the four levels stay four codes at 256 colours with 0.7 or more, and at 16 colours only
# with the heat alone (0.9 still merges some), so 16 colours draw heat-only cells (`o`
# shows the image).
LOW_DEPTH_BLEND = MappingProxyType({"256": 0.75, "16": 1.0})


def blend(pixels: np.ndarray, levels: Optional[np.ndarray], depth: str = "truecolor") -> np.ndarray:
    """uint8 [h, w, 3]: the image with the heat of `levels` ([h, w] in [0, 1]) laid over it,
    as `depth` ("truecolor", "256", "16") keeps the levels apart (LOW_DEPTH_BLEND)."""
    if levels is None:
        return pixels
    weight = LOW_DEPTH_BLEND.get(depth)
    if weight is None:
        out = (1 - BLEND) * pixels.astype(np.float64) + BLEND * heat_rgb(levels)
    else:
        out = (1 - weight) * pixels.astype(np.float64) + weight * _STOPS[quarter(levels)]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def quarter(levels: np.ndarray) -> np.ndarray:
    """int [..] legend level 0..3 (<.25 <.5 <.75 ≥.75 of the largest weight) of values in [0, 1]."""
    x = np.clip(np.nan_to_num(np.asarray(levels, np.float64), nan=0.0), 0.0, 1.0)
    return np.minimum((x * 4).astype(int), 3)


def grey_glyphs(pixels: np.ndarray) -> np.ndarray:
    """[h // 2, w] glyphs of GREY_RAMP by the luma of each cell's two pixels (no colour),
    stretched over the image's own luma range: ten glyphs carry little, so a dark image with
    a red shape (luma 40 vs 94) still shows the shape."""
    luma = pixels.astype(np.float64) @ np.asarray([0.299, 0.587, 0.114])
    h2 = luma.shape[0] // 2 * 2
    cell = (luma[0:h2:2] + luma[1:h2:2]) / 2
    lo, span = luma.min(), max(luma.max() - luma.min(), 1.0)
    idx = np.clip(((cell - lo) / span * len(GREY_RAMP)).astype(int), 0, len(GREY_RAMP) - 1)
    return np.asarray(list(GREY_RAMP))[idx]


# Heat levels drawn: values over the largest are rounded DOWN to 1/LEVELS, so a step whose
# weights moved a little leaves the cells (and the bytes a frame sends) as they were. Down,
# and LEVELS a multiple of 4: the legend's ░▒▓█ boundaries (.25 .5 .75) are levels, so a value
# keeps its glyph (0.734 of the max stays ▓ <.75; rounding to nearest drew it █).
LEVELS = 8
assert LEVELS % 4 == 0


def normalise(grid: np.ndarray, top: float) -> np.ndarray:
    """Values over `top` (the largest shown) in [0, 1], rounded down to 1/LEVELS; zeros when
    top is not positive."""
    if not top > 0:
        return np.zeros_like(grid, dtype=np.float64)
    return np.floor(np.clip(np.asarray(grid, np.float64) / top, 0.0, 1.0) * LEVELS) / LEVELS
