"""Multimodal (t, h, w) position ids and rope deltas for Qwen3-VL, on the host in NumPy.

Rules: docs/qwen3vl.md §4. Text tokens advance all three axes together; the k-th image's
<|image_pad|> run is laid out on its merged (h/2, w/2) grid starting at the current
position, after which the position jumps by max(h/2, w/2).

Unlike HF, the rope delta is taken against the PADDED length S, so that with left-padded
prompts every row decodes at `cache.length + rope_deltas[b]` (cache.length = S after prefill).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2


def image_token_mask(input_ids, config) -> np.ndarray:
    """bool [B, S]: slots holding an <|image_pad|> token (where image features go)."""
    return np.asarray(input_ids) == config.image_token_id


def mm_token_type_ids(input_ids, config) -> np.ndarray:
    """int32 [B, S]: 0 text, 1 image pad, 2 video pad (what HF 5.x's processor returns)."""
    ids = np.asarray(input_ids)
    out = np.zeros(ids.shape, np.int32)
    out[ids == config.image_token_id] = IMAGE
    out[ids == config.video_token_id] = VIDEO
    return out


def _runs(is_image: np.ndarray):
    """(is_image, start, end) for each maximal run of equal values."""
    if is_image.size == 0:
        return []
    edges = np.flatnonzero(np.diff(is_image.astype(np.int8))) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [is_image.size]])
    return [(bool(is_image[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def _image_positions(start: int, t: int, h: int, w: int) -> np.ndarray:
    """[3, t*h*w] positions of one image's merged tokens in raster (t, y, x) order."""
    ti, yi, xi = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([ti.ravel(), yi.ravel(), xi.ravel()]) + start


def get_rope_index(input_ids, image_grid_thw=None, attention_mask=None, config=None
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """3-axis mRoPE position ids for a (left-padded) batch.

    Args:
        input_ids: int [B, S] token ids (image pads already expanded to h*w/merge² per image).
        image_grid_thw: int [n, 3] patch grids, images consumed in order across the batch
            rows (row 0's images first), or None for text only.
        attention_mask: [B, S] 1 for real tokens, 0 for padding (padded slots get position 0
            and must be masked by the caller), or None for all real.
        config: Qwen3VLConfig (image/video token ids, vision.spatial_merge_size).
    Returns:
        position_ids int32 [3, B, S] and rope_deltas int32 [B] with
        rope_deltas[b] = max(position_ids[:, b] over real slots) + 1 - S.
    """
    if config is None:
        raise ValueError("get_rope_index needs the model config (token ids and spatial_merge_size)")
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [batch, seq], got {ids.shape}")
    b, s = ids.shape
    mask = np.ones((b, s), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    if np.any((ids == config.video_token_id) & mask):
        raise ValueError("input_ids contain <|video_pad|> tokens; video inputs are not supported")
    merge = config.vision.spatial_merge_size
    grids = np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3)
    llm_grids = [(int(t), int(h) // merge, int(w) // merge) for t, h, w in grids.tolist()]
    is_image = (ids == config.image_token_id) & mask

    position_ids = np.zeros((3, b, s), np.int64)
    deltas = np.zeros(b, np.int64)
    next_image = 0
    for row in range(b):
        real = np.flatnonzero(mask[row])
        pieces, cur = [], 0
        for image_run, start, end in _runs(is_image[row, real]):
            if not image_run:
                pieces.append(np.broadcast_to(np.arange(cur, cur + end - start), (3, end - start)))
                cur += end - start
                continue
            # A run may hold several images back to back; each needs its own grid.
            remaining = end - start
            while remaining > 0:
                if next_image >= len(llm_grids):
                    raise ValueError(f"batch row {row} has more <|image_pad|> tokens than the {len(llm_grids)} "
                                     "image grid(s) in image_grid_thw account for")
                t, h, w = llm_grids[next_image]
                if t * h * w > remaining:
                    raise ValueError(f"image {next_image} (grid {grids[next_image].tolist()}) needs {t * h * w} "
                                     f"<|image_pad|> tokens but batch row {row} has a run of only {remaining} left")
                pieces.append(_image_positions(cur, t, h, w))
                cur += max(h, w)  # t == 1 for images, so this equals max position + 1
                remaining -= t * h * w
                next_image += 1
        row_pos = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
        position_ids[:, row, real] = row_pos
        deltas[row] = (int(row_pos.max()) + 1 if row_pos.size else 0) - s
    if next_image != len(llm_grids):
        raise ValueError(f"image_grid_thw has {len(llm_grids)} images but input_ids hold <|image_pad|> runs "
                         f"for only {next_image}")
    return position_ids.astype(np.int32), deltas.astype(np.int32)


def decode_position_ids(cache_length: int, rope_deltas) -> np.ndarray:
    """int32 [3, B, 1]: the position of the next decoded token (the same on all three axes)."""
    pos = int(cache_length) + np.asarray(rope_deltas, np.int64)
    return np.broadcast_to(pos[None, :, None], (3, pos.shape[0], 1)).astype(np.int32)
