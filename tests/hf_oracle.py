"""Tiny random Hugging Face Qwen3-VL checkpoints: the reference oracle for parity tests.

Usable two ways:
  * plain functions (benchmarks, scripts): `build_tiny_checkpoint(path=None, **kw) -> (hf_model, path)`,
    `hf_forward(...)`, `hf_generate(...)`, `make_prompt(...)`;
  * pytest fixtures, registered by conftest.py (tests import nothing from here):
    `hf_factory` (session scoped; each distinct set of options is built and saved once per
    test session) or the ready-made `hf_tiny`.

Every parameter is randomised (norm weights around 1, biases, a scaled-up pos_embed) because
HF's init leaves norms at 1 and biases at 0, which hides (1+w) and bias bugs (docs/qwen3vl.md §10).
The model is reloaded from disk with `attn_implementation="eager"` in fp32, so what the tests
compare against is exactly what `load_hf_checkpoint` reads.
"""
from __future__ import annotations

import tempfile
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

IMAGE_TOKEN_ID = 151655
VIDEO_TOKEN_ID = 151656
VISION_START_ID = 151652
VISION_END_ID = 151653
PATCH_DIM = 3 * 2 * 16 * 16  # C * temporal_patch * patch * patch


def special_ids(vocab_size: int) -> dict:
    """Token ids for image/video/vision markers: the real ones when the vocab holds them,
    otherwise the top of a small vocab (so small-vocab models stay valid)."""
    if vocab_size > VIDEO_TOKEN_ID:
        return dict(image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID,
                    vision_start_token_id=VISION_START_ID, vision_end_token_id=VISION_END_ID)
    if vocab_size < 16:
        raise ValueError(f"vocab_size {vocab_size} too small for a Qwen3-VL test model")
    return dict(image_token_id=vocab_size - 2, video_token_id=vocab_size - 1,
                vision_start_token_id=vocab_size - 4, vision_end_token_id=vocab_size - 3)


def tiny_hf_config(*, vocab_size: int = 152000, num_kv_heads: int = 2, num_heads: int = 4, tie: bool = True,
                   deepstack: Sequence[int] = (0, 1), text_layers: int = 2, hidden: int = 64,
                   head_dim: int = 16, mrope_section: Sequence[int] = (2, 3, 3), vision_depth: int = 2):
    """A transformers Qwen3VLConfig for a seconds-to-run model (docs/qwen3vl.md §10.1)."""
    from transformers import Qwen3VLConfig as HFConfig

    ids = special_ids(vocab_size)
    text_config = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=text_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=head_dim, rms_norm_eps=1e-6,
        max_position_embeddings=4096, rope_theta=5e6, tie_word_embeddings=tie,
        rope_scaling={"rope_type": "default", "mrope_section": list(mrope_section), "mrope_interleaved": True},
        bos_token_id=0, eos_token_id=1,
    )
    vision_config = dict(
        depth=vision_depth, hidden_size=32, intermediate_size=64, num_heads=4, in_channels=3, patch_size=16,
        temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=hidden, num_position_embeddings=64,
        deepstack_visual_indexes=list(deepstack),
    )
    return HFConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=tie, **ids)


def randomize_(model, seed: int = 0) -> None:
    """Overwrite every parameter in place with values that expose norm/bias/interpolation bugs."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "pos_embed" in name:
                val = 0.5 * noise  # x10 the matrix scale: interpolation errors become visible
            elif name.endswith("bias"):
                val = 0.1 * noise
            elif p.ndim == 1:  # RMSNorm / LayerNorm weights
                val = 1.0 + 0.3 * noise
            else:
                val = 0.05 * noise
            p.copy_(val.to(p.dtype))


def build_tiny_checkpoint(path: Optional[str] = None, *, seed: int = 0, dtype: str = "float32", **config_kw):
    """Build, randomise and save a tiny model; return (hf_model reloaded from disk, eager, eval; path).

    config_kw go to `tiny_hf_config` (vocab_size, num_kv_heads, tie, deepstack, text_layers, ...).
    dtype: "float32" or "bfloat16" for the reloaded reference (the saved file is always fp32).
    """
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    cfg = tiny_hf_config(**config_kw)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    randomize_(model, seed)
    if path is None:
        path = tempfile.mkdtemp(prefix="qwen3vl_tiny_")
    model.save_pretrained(path)
    return load_reference(path, dtype), path


def load_reference(path: str, dtype: str = "float32"):
    """The HF model from a saved dir, eager attention, eval mode, generation set to pure greedy."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=tdt, attn_implementation="eager").eval()
    gc = model.generation_config
    gc.eos_token_id = None  # never stop early: continuations are compared token by token
    gc.pad_token_id = 0
    gc.do_sample = False
    gc.temperature = gc.top_p = gc.top_k = None
    return model


def make_prompt(vocab_size: int, segments: Iterable, seed: int = 0):
    """Token ids (+ pixels) for a prompt described by segments.

    segments: items ("text", n) for n random ordinary tokens, or ("image", (t, h, w)) for
    <vision_start> + t*h*w/4 image pads + <vision_end>.
    Returns (input_ids int64 [S], pixel_values float32 [sum t*h*w, 1536] or None, image_grid_thw int64 [n,3] or None).
    """
    rng = np.random.default_rng(seed)
    ids = special_ids(vocab_size)
    hi = min(vocab_size - 8, 151640)  # ordinary tokens only, below every special id
    toks, grids = [], []
    for kind, arg in segments:
        if kind == "text":
            toks.extend(int(x) for x in rng.integers(2, hi, size=int(arg)))
        elif kind == "image":
            t, h, w = (int(v) for v in arg)
            if h % 2 or w % 2:
                raise ValueError(f"image grid {arg} needs even h and w (2x2 merge)")
            toks.append(ids["vision_start_token_id"])
            toks.extend([ids["image_token_id"]] * (t * h * w // 4))
            toks.append(ids["vision_end_token_id"])
            grids.append((t, h, w))
        else:
            raise ValueError(f"unknown prompt segment kind {kind!r}")
    input_ids = np.asarray(toks, dtype=np.int64)
    if not grids:
        return input_ids, None, None
    n_patches = sum(t * h * w for t, h, w in grids)
    pixel_values = rng.standard_normal((n_patches, PATCH_DIM)).astype(np.float32)
    return input_ids, pixel_values, np.asarray(grids, dtype=np.int64)


def left_pad(rows: Sequence[np.ndarray], pad_id: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Left-pad 1-D id arrays to one batch; returns (ids [B,S], attention_mask [B,S])."""
    S = max(len(r) for r in rows)
    ids = np.full((len(rows), S), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), S), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, S - len(r):] = r
        mask[i, S - len(r):] = 1
    return ids, mask


def _hf_inputs(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
    import torch

    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    kw = dict(input_ids=torch.from_numpy(ids))
    if attention_mask is not None:
        am = np.asarray(attention_mask, dtype=np.int64).reshape(ids.shape)
        kw["attention_mask"] = torch.from_numpy(am)
    if pixel_values is not None:
        param_dtype = next(model.parameters()).dtype
        kw["pixel_values"] = torch.from_numpy(np.asarray(pixel_values, np.float32)).to(param_dtype)
        kw["image_grid_thw"] = torch.from_numpy(np.asarray(image_grid_thw, dtype=np.int64))
        # transformers 5.x refuses image inputs without this (docs/qwen3vl.md §4.3): 1 marks image pads
        kw["mm_token_type_ids"] = torch.from_numpy((ids == model.config.image_token_id).astype(np.int64))
    return kw


def hf_forward(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> np.ndarray:
    """Full (uncached) HF forward; logits as float32 numpy [B, S, V]."""
    import torch

    with torch.no_grad():
        out = model(**_hf_inputs(model, input_ids, attention_mask, pixel_values, image_grid_thw), use_cache=False)
    return out.logits.float().numpy()


def hf_generate(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                max_new_tokens: int = 32, return_logits: bool = False):
    """HF greedy `generate` (cached).

    Returns the new tokens, int64 [B, max_new_tokens]; with return_logits also the raw
    logits of every generated step, float32 [B, max_new_tokens, V] (step k's logits chose token k).
    """
    import torch

    kw = _hf_inputs(model, input_ids, attention_mask, pixel_values, image_grid_thw)
    with torch.no_grad():
        out = model.generate(**kw, max_new_tokens=max_new_tokens, do_sample=False,
                             return_dict_in_generate=True, output_logits=return_logits)
    tokens = out.sequences[:, kw["input_ids"].shape[1]:].numpy()
    if not return_logits:
        return tokens
    return tokens, torch.stack(out.logits, dim=1).float().numpy()


# ---- pytest fixtures -----------------------------------------------------------------------
try:
    import pytest
except ImportError:  # plain-function use without pytest installed
    pytest = None

if pytest is not None:
    _CACHE: dict = {}

    @pytest.fixture(scope="session")
    def hf_factory(tmp_path_factory):
        """Session-scoped builder: hf_factory(**kw) -> (hf_model, path); each kw set built once."""

        def get(**kw):
            key = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in kw.items()))
            if key not in _CACHE:
                path = str(tmp_path_factory.mktemp("qwen3vl_tiny"))
                _CACHE[key] = build_tiny_checkpoint(path, **kw)
            return _CACHE[key]

        return get

    @pytest.fixture(scope="session")
    def hf_tiny(hf_factory):
        """The default tiny checkpoint: vocab 152000, GQA 4/2, tied, DeepStack (0,1)."""
        return hf_factory()
