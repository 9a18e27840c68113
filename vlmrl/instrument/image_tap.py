"""Host side of the image view's taps: the watched sample's images and its attention on them.

No JAX: numpy and Pillow on the sampler's thread (images, once per generate call) and on
XLA's callback threads (attention, with every emit). Bounds are in `limits.py`.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from vlmrl.instrument.events import ImageAttention, ImageState
from vlmrl.instrument.limits import IMAGE_MAX_COUNT, IMAGE_MAX_H, IMAGE_MAX_W


def downsample(rgb: np.ndarray, max_w: int = IMAGE_MAX_W, max_h: int = IMAGE_MAX_H) -> np.ndarray:
    """uint8 [h, w, 3] fitting max_w x max_h with the aspect ratio kept (never enlarged):
    Pillow's box filter, so each pixel is the mean of the pixels it covers."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_w / w, max_h / h)
    if scale >= 1.0:
        return np.ascontiguousarray(rgb, np.uint8)
    size = (max(1, min(max_w, round(w * scale))), max(1, min(max_h, round(h * scale))))
    return np.asarray(Image.fromarray(np.asarray(rgb, np.uint8), "RGB").resize(size, Image.BOX), np.uint8)


def image_events(generation: int, row: int, images: Sequence[Tuple[tuple, np.ndarray]]) -> List[ImageState]:
    """One ImageState per image of the watched row: (merged grid (t, h, w), the uint8 image the
    model saw) pairs, in token order; at most IMAGE_MAX_COUNT."""
    images = list(images)[:IMAGE_MAX_COUNT]
    return [ImageState(generation=generation, seq_index=row, index=i, count=len(images),
                       grid=tuple(int(x) for x in grid), size=(int(rgb.shape[0]), int(rgb.shape[1])),
                       pixels=downsample(rgb)) for i, (grid, rgb) in enumerate(images)]


def attention_event(p: dict, *, generation: int, row: int, tokens: int, token_id: int, token_text: str,
                    phase: str, pool: int = 1, cells: Optional[int] = None) -> Optional[ImageAttention]:
    """The ImageAttention of one unpacked payload (`taps.unpack_payload`), cut to the `cells`
    the row's `tokens` image tokens fill when pooled `pool` x `pool` (default: one a token);
    None when the payload has no image part or the row has no image."""
    att, share = p.get("img_attn"), p.get("img_share")
    if att is None or share is None or tokens <= 0:
        return None
    n = min(int(tokens if cells is None else cells), att.shape[1])
    return ImageAttention(generation=generation, step=int(p["step"]), seq_index=row, phase=phase,
                          token_id=int(token_id), token_text=token_text, tokens=int(tokens), pool=int(pool),
                          attention=np.array(att[:, :n], np.float16), image_share=np.array(share, np.float32))
