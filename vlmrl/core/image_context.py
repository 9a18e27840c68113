"""What the image view needs to know about a generate call, from the host-side inputs.

The watched row's image tokens and the images it holds, rebuilt from the pixel rows the
model is fed (`processor.unpatchify`: the resized image the model saw, so the merged patch
grid lies exactly over it). Runs only when the taps are on, once per generate call.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from vlmrl.instrument.limits import IMAGE_MAX_COUNT
from vlmrl.models.qwen3vl.processor import ImageProcessorConfig, unpatchify


def watched_images(ids: np.ndarray, grid: Optional[np.ndarray], pixel_values: Optional[np.ndarray], image_token_id: int,
                   merge: int, watch: int, image_config: Optional[ImageProcessorConfig] = None
                   ) -> Tuple[int, List[tuple]]:
    """(image tokens of row `watch`, [(merged grid (t, h, w), uint8 [H, W, 3]), ...] of its images).

    ids: [B, S] prompt ids as fed; grid: int [n, 3] per image in row-major token order (as
    Hugging Face numbers them: each run of image tokens is one image); pixel_values: the
    unpadded [sum(t*h*w), D] rows of all images in that order."""
    if grid is None or pixel_values is None or not 0 <= watch < len(ids):
        return 0, []
    runs = [_runs(row == image_token_id) for row in ids]
    first = sum(runs[:watch])
    grid = np.asarray(grid, np.int64).reshape(-1, 3)
    offsets = np.concatenate([[0], np.cumsum(grid.prod(-1))])
    tokens = int((ids[watch] == image_token_id).sum())
    cfg = image_config or ImageProcessorConfig()
    if cfg.merge_size != merge:
        cfg = cfg.replace(merge_size=merge)
    images = []
    for j in range(first, min(first + runs[watch], len(grid), first + IMAGE_MAX_COUNT)):
        t, h, w = (int(x) for x in grid[j])
        rgb = unpatchify(pixel_values[offsets[j]:offsets[j + 1]], (t, h, w), cfg)
        images.append(((t, h // merge, w // merge), rgb))
    return tokens, images


def pool_cells(grids: Sequence[tuple], slots: int, bound: int) -> Tuple[int, int, np.ndarray]:
    """(f, cells used, int32 [bound]): the smallest factor f such that the images' merged
    grids pooled f x f (per frame, ceil at the edges) fit `slots` cells, how many cells that
    fills, and the cell of each image token in token order (row-major within a frame, frames
    in order, images in order); `slots` (dropped) past the last token. f = 1 when every
    token has its own cell."""
    grids = [tuple(int(x) for x in g) for g in grids]
    f = 1
    while f < 1 << 16 and sum(t * math.ceil(h / f) * math.ceil(w / f) for t, h, w in grids) > slots:
        f += 1
    cells, off = [], 0
    for t, h, w in grids:
        hp, wp = math.ceil(h / f), math.ceil(w / f)
        frame = ((np.arange(h)[:, None] // f) * wp + np.arange(w)[None, :] // f).reshape(-1)
        cells += [off + k * hp * wp + frame for k in range(t)]
        off += t * hp * wp
    flat = np.concatenate(cells) if cells else np.zeros(0, np.int64)
    out = np.full(bound, slots, np.int32)
    out[:min(bound, flat.size)] = flat[:bound]
    return f, min(off, slots), out


def _runs(mask: np.ndarray) -> int:
    """Contiguous runs of True in a 1-D mask."""
    m = np.asarray(mask, bool)
    return int(np.count_nonzero(m[1:] & ~m[:-1]) + (1 if m.size and m[0] else 0))
