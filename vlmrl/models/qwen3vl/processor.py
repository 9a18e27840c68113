"""Qwen3-VL input side: image preprocessing and chat prompts (the tokenizer is `tokenizer.py`).

Images follow HF's `Qwen2VLImageProcessorPil` with the Qwen3-VL preprocessor values
(`docs/tokenizer.md`): smart_resize to multiples of patch*merge, PIL bicubic, x/255,
(x-0.5)/0.5, then patches flattened in merge-window order, each frame repeated over the
temporal patch. Prompts use the checkpoint's chat template (else Qwen's Instruct format)
and then get one <|image_pad|> per merged 2x2 window.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from vlmrl.models.qwen3vl.tokenizer import (  # noqa: F401  (re-exported: the processor's public names)
    ENDOFTEXT, IM_END, IM_START, IMAGE_PAD, VISION_END, VISION_START, QwenTokenizer, builtin_chat, load_tokenizer)
MAX_ASPECT_RATIO = 200

# PIL modes HF's convert("RGB") handles faithfully; 16-bit / float modes would be clipped to 8 bits.
_OK_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """Qwen3-VL preprocessor values (HF class defaults are Qwen2-VL's: do not rely on them)."""
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 65536          # size.shortest_edge in preprocessor_config.json (256²)
    max_pixels: int = 16777216       # size.longest_edge (4096²)
    image_mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resample: int = 3                # PIL BICUBIC

    def __post_init__(self):
        if self.min_pixels < 1 or self.max_pixels < self.min_pixels:
            raise ValueError(f"need 1 <= min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if min(self.patch_size, self.temporal_patch_size, self.merge_size) < 1:
            raise ValueError("patch_size, temporal_patch_size and merge_size must be positive")

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def replace(self, **changes) -> "ImageProcessorConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_pretrained(cls, path: str, min_pixels: Optional[int] = None,
                        max_pixels: Optional[int] = None) -> "ImageProcessorConfig":
        """Read `preprocessor_config.json` from a checkpoint dir (Qwen3-VL defaults if absent)."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
        cfg = cls()
        file = os.path.join(path, "preprocessor_config.json")
        if os.path.isfile(file):
            cfg = cls.from_json_file(file)
        return cfg.replace(min_pixels=min_pixels, max_pixels=max_pixels)

    @classmethod
    def from_json_file(cls, file: str) -> "ImageProcessorConfig":
        try:
            with open(file, encoding="utf-8") as fh:
                raw = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{file} must hold a JSON object")
        size = raw.get("size") or {}
        fields = dict(
            patch_size=raw.get("patch_size"), temporal_patch_size=raw.get("temporal_patch_size"),
            merge_size=raw.get("merge_size"),
            # Both encodings exist in the wild: size{shortest,longest}_edge and min/max_pixels.
            min_pixels=size.get("shortest_edge", raw.get("min_pixels")),
            max_pixels=size.get("longest_edge", raw.get("max_pixels")),
            image_mean=tuple(raw["image_mean"]) if "image_mean" in raw else None,
            image_std=tuple(raw["image_std"]) if "image_std" in raw else None,
            rescale_factor=raw.get("rescale_factor"), resample=raw.get("resample"))
        try:
            return cls().replace(**fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{file}: unusable preprocessor values ({exc})") from None


def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = 65536,
                 max_pixels: int = 16777216) -> Tuple[int, int]:
    """(h, w) that are multiples of `factor`, near the input aspect, with min <= h*w <= max pixels."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} of a {height}x{width} image "
                         f"exceeds {MAX_ASPECT_RATIO}")
    h_bar = round(height / factor) * factor   # Python round: half to even, as HF
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# ---- images -------------------------------------------------------------------------------

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]


def _to_rgb(image: ImageLike, index: int) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image {index}: no file at {os.fspath(image)!r}")
        try:
            with Image.open(image) as im:
                im.load()
                image = im.copy()
        except (OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"image {index}: cannot read {os.fspath(image)!r} as an image ({exc})") from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image {index}: numpy images must be uint8 [H, W] or [H, W, 1|3|4], "
                             f"got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
            raise ValueError(f"image {index}: numpy images must be [H, W] or [H, W, 1|3|4], got shape {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image {index}: expected a PIL image, uint8 array or path, got {type(image).__name__}")
    if image.mode not in _OK_MODES:
        raise ValueError(f"image {index}: PIL mode {image.mode!r} is not supported (16-bit/float data would be "
                         "clipped); convert it to 8-bit RGB first")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image {index}: empty image ({image.width}x{image.height})")
    # As HF: transparency is composited onto white, everything else converted to RGB.
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _patchify(chw: np.ndarray, cfg: ImageProcessorConfig) -> np.ndarray:
    """[C, H, W] -> [gh*gw, C*T*P*P] rows in merge-window order (block-row, block-col, in-row, in-col)."""
    c, h, w = chw.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = h // p, w // p
    x = chw.reshape(c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)                     # (BR, BC, ir, ic, C, py, px)
    x = np.broadcast_to(x[:, :, :, :, :, None], x.shape[:5] + (t,) + x.shape[5:])  # frame repeated over T
    return x.reshape(gh * gw, c * t * p * p)


def unpatchify(rows: np.ndarray, grid_thw, config: Optional["ImageProcessorConfig"] = None) -> np.ndarray:
    """The image one grid's pixel rows hold, as uint8 [H, W, 3] (its first temporal frame):
    the inverse of `_patchify` and the normalisation, i.e. the resized image the model saw.

    rows: float [t*h*w, C*T*P*P] in merge-window order; grid_thw: its (t, h, w) in patches."""
    cfg = config or ImageProcessorConfig()
    t, h, w = (int(v) for v in grid_thw)
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    rows = np.asarray(rows, np.float32)
    if rows.shape != (t * h * w, 3 * tp * p * p) or h % m or w % m:
        raise ValueError(f"pixel rows {rows.shape} do not fit grid {(t, h, w)} with patch {p}, merge {m}")
    x = rows[:h * w].reshape(h // m, w // m, m, m, 3, tp, p, p)[:, :, :, :, :, 0]  # (BR, BC, ir, ic, C, py, px)
    x = x.transpose(0, 2, 5, 1, 3, 6, 4).reshape(h * p, w * p, 3)  # (BR, ir, py, BC, ic, px, C)
    x = x * np.asarray(cfg.image_std, np.float32) + np.asarray(cfg.image_mean, np.float32)
    return np.clip(np.rint(x / cfg.rescale_factor), 0, 255).astype(np.uint8)


def preprocess_images(images: Union[ImageLike, Sequence[ImageLike]], config: Optional[ImageProcessorConfig] = None,
                      *, min_pixels: Optional[int] = None, max_pixels: Optional[int] = None
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Images -> (pixel_values float32 [N, C*T*P*P], image_grid_thw int64 [n, 3]).

    Args:
        images: one image or a list; PIL images, uint8 arrays ([H,W] or [H,W,1|3|4]) or file paths.
        config: preprocessing values (default: Qwen3-VL's); min_pixels/max_pixels override it.
    """
    cfg = (config or ImageProcessorConfig()).replace(min_pixels=min_pixels, max_pixels=max_pixels)
    if isinstance(images, (Image.Image, np.ndarray, str, os.PathLike)):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("preprocess_images needs at least one image")
    mean = np.asarray(cfg.image_mean, np.float32)
    std = np.asarray(cfg.image_std, np.float32)
    rows, grids = [], []
    for i, image in enumerate(images):
        rgb = _to_rgb(image, i)
        try:
            h, w = smart_resize(rgb.height, rgb.width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
        except ValueError as exc:
            raise ValueError(f"image {i}: {exc}") from None
        resized = np.asarray(rgb.resize((w, h), resample=cfg.resample))       # uint8 [H, W, 3]
        # Same arithmetic as HF: rescale in float64, cast to float32, normalise in float32.
        x = (resized.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
        x = (x - mean) / std
        rows.append(_patchify(np.ascontiguousarray(x.transpose(2, 0, 1)), cfg))
        grids.append([1, h // cfg.patch_size, w // cfg.patch_size])
    return np.concatenate(rows).astype(np.float32), np.asarray(grids, np.int64)


# ---- prompts ------------------------------------------------------------------------------

def num_image_tokens(grid_thw, merge_size: int = 2) -> int:
    t, h, w = (int(v) for v in grid_thw)
    return t * h * w // (merge_size * merge_size)


def render_chat(text: str, num_images: int = 0, system: Optional[str] = None,
                add_generation_prompt: bool = True, tokenizer: Optional[QwenTokenizer] = None) -> str:
    """One user turn (images first, then text) before pad expansion: one <|image_pad|> per image,
    in the tokenizer's own chat template when it has one, else Qwen's built-in format."""
    if tokenizer is not None:
        return tokenizer.render_chat(text, num_images, system, add_generation_prompt)
    return builtin_chat(text, num_images, system, add_generation_prompt)


def expand_image_pads(prompt: str, image_grid_thw, merge_size: int = 2) -> str:
    """Replace the k-th single <|image_pad|> with t*h*w/merge² copies for image k (as HF's processor)."""
    grids = np.asarray(image_grid_thw).reshape(-1, 3)
    parts = prompt.split(IMAGE_PAD)
    if len(parts) - 1 != len(grids):
        raise ValueError(f"prompt has {len(parts) - 1} {IMAGE_PAD} placeholders but {len(grids)} images were given")
    out = [parts[0]]
    for grid, rest in zip(grids, parts[1:]):
        out.append(IMAGE_PAD * num_image_tokens(grid, merge_size) + rest)
    return "".join(out)


def build_prompt(text: str, image_grid_thw=None, *, system: Optional[str] = None, merge_size: int = 2,
                 add_generation_prompt: bool = True, tokenizer: Optional[QwenTokenizer] = None) -> str:
    """Chat prompt for `text` with the given images, pads already expanded per image grid
    (the tokenizer's chat template when given and it has one)."""
    grids = np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3)
    prompt = render_chat(text, len(grids), system, add_generation_prompt, tokenizer)
    return expand_image_pads(prompt, grids, merge_size)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids int32 [B, S], attention_mask int32 [B, S]), padded on the LEFT.

    Left padding puts every row's last prompt token in the same slot, so one cache write
    index serves the whole batch.
    """
    seqs = [list(map(int, s)) for s in sequences]
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("left_pad needs at least one sequence and no empty ones")
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), int(pad_id), np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = s
        mask[row, width - len(s):] = 1
    return ids, mask
