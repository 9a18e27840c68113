"""Qwen3-VL vision tower (HF `model.visual`) in Flax NNX, plus its host-side index prep.

All data-dependent index work (merge-window coordinates, pos-embed interpolation taps,
per-image segment ids) happens on the host in NumPy (`prepare_vision_inputs`), so the
tower itself is a fixed-shape program that jits with those arrays as arguments.
Facts and pitfalls: docs/qwen3vl.md §5 and §9.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlmrl.models.qwen3vl.config import VisionConfig

# Padding patches (see `pad_to`) get this segment id: they attend only among themselves,
# so real patches never see them and their softmax rows stay finite.
PAD_SEGMENT = -1


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class VisionInputs:
    """Host-prepared index arrays for one call of `VisionTower`.

    N is the (possibly padded) number of patches. The four per-patch arrays are the
    pytree's leaves, so a jitted tower compiles once per N however the images split it.
    """
    coords_hw: np.ndarray      # int32 [N, 2]: full-resolution (row, col) of each patch, merge-window order
    pos_idx: np.ndarray        # int32 [N, 4]: rows of pos_embed to blend (bilinear taps)
    pos_w: np.ndarray          # float32 [N, 4]: blend weights (0 for padding patches)
    segment_ids: np.ndarray    # int32 [N]: frame index; attention stays within a segment

    def tree_flatten(self):
        return (self.coords_hw, self.pos_idx, self.pos_w, self.segment_ids), None

    @classmethod
    def tree_unflatten(cls, _aux, children):
        return cls(*children)


def _check_grid(grid: np.ndarray, merge: int) -> np.ndarray:
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"image_grid_thw must have shape [n_images, 3], got {grid.shape}")
    if not np.issubdtype(grid.dtype, np.integer):
        raise ValueError(f"image_grid_thw must be integers, got dtype {grid.dtype}")
    for i, (t, h, w) in enumerate(grid.tolist()):
        if t < 1 or h < 1 or w < 1 or h % merge or w % merge:
            raise ValueError(f"image_grid_thw[{i}] = {(t, h, w)}: t, h, w must be positive and h, w "
                             f"divisible by spatial_merge_size {merge}")
    return grid.astype(np.int64)


def _merge_window_coords(h: int, w: int, merge: int) -> Tuple[np.ndarray, np.ndarray]:
    """(row, col) of each patch of one frame, in the order the processor emits pixel rows."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    # (block_row, in_row, block_col, in_col) -> (block_row, block_col, in_row, in_col)
    rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    return rows, cols


def _axis_taps(index: np.ndarray, size: int, side: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear align_corners=True taps along one axis, in float32 exactly as HF 5.x does it."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    lo = np.floor(src)
    frac = (src - lo).astype(np.float32)
    lo = lo.astype(np.int64)
    return np.clip(lo, 0, side - 1), np.clip(lo + 1, 0, side - 1), frac


def prepare_vision_inputs(image_grid_thw, vision_config: VisionConfig,
                          pad_to: Optional[int] = None) -> VisionInputs:
    """Index arrays for the vision tower, computed on the host.

    Args:
        image_grid_thw: int [n, 3] patch grid (t, h, w) per image, as the processor returns.
        vision_config: the model's VisionConfig.
        pad_to: optional patch count to pad to (a multiple of merge², >= the real count), so
            that differently sized batches share one compiled program. Padding patches form
            their own attention segment and their merged rows come last (the real rows are
            the first sum(t*h*w) / merge² of the output).
    Returns:
        VisionInputs (NumPy arrays; pass them straight into a jitted call).
    """
    merge = vision_config.spatial_merge_size
    grid = _check_grid(image_grid_thw, merge)
    side = int(round(vision_config.num_position_embeddings ** 0.5))
    if side * side != vision_config.num_position_embeddings:
        raise ValueError(f"num_position_embeddings {vision_config.num_position_embeddings} is not a perfect square")
    coords, idx, wts, seg, cu = [], [], [], [], [0]
    frame = 0
    for t, h, w in grid.tolist():
        rows, cols = _merge_window_coords(h, w, merge)
        r0, r1, dr = _axis_taps(rows, h, side)
        c0, c1, dc = _axis_taps(cols, w, side)
        one = np.float32(1.0)
        taps = np.stack([r0 * side + c0, r0 * side + c1, r1 * side + c0, r1 * side + c1], axis=1)
        weights = np.stack([(one - dr) * (one - dc), (one - dr) * dc, dr * (one - dc), dr * dc], axis=1)
        for _ in range(t):  # every frame reuses the same coordinates and embedding
            coords.append(np.stack([rows, cols], axis=1))
            idx.append(taps)
            wts.append(weights)
            seg.append(np.full(h * w, frame))
            cu.append(cu[-1] + h * w)
            frame += 1
    n = cu[-1]
    unit = merge * merge
    if pad_to is not None:
        if pad_to < n or pad_to % unit:
            raise ValueError(f"pad_to={pad_to} must be >= the {n} real patches and a multiple of {unit}")
        extra = pad_to - n
        if extra:
            coords.append(np.zeros((extra, 2), np.int64))
            idx.append(np.zeros((extra, 4), np.int64))
            wts.append(np.zeros((extra, 4), np.float32))
            seg.append(np.full(extra, PAD_SEGMENT))
    return VisionInputs(
        coords_hw=np.concatenate(coords).astype(np.int32),
        pos_idx=np.concatenate(idx).astype(np.int32),
        pos_w=np.concatenate(wts).astype(np.float32),
        segment_ids=np.concatenate(seg).astype(np.int32),
    )


# ---- modules ------------------------------------------------------------------------------

def _rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _layer_norm(dim: int, eps: float, dtype, rngs) -> nnx.LayerNorm:
    # Two-pass variance: the fast E[x²]-E[x]² form loses digits against PyTorch's LayerNorm.
    return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=dtype, use_fast_variance=False, rngs=rngs)


class PatchEmbed(nnx.Module):
    """HF's Conv3d with kernel = stride = (T, P, P) is a Linear over the flattened (C, T, P, P) patch."""

    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs):
        in_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size
        self.proj = nnx.Linear(in_dim, cfg.hidden_size, use_bias=True, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, pixel_values):
        return self.proj(pixel_values.astype(self.proj.kernel.get_value().dtype))


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.qkv = nnx.Linear(d, 3 * d, use_bias=True, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(d, d, use_bias=True, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, x_nd, cos_nd, sin_nd, same_segment_nn):
        n = x_nd.shape[0]
        qkv = self.qkv(x_nd).reshape(n, 3, self.num_heads, self.head_dim)
        q_nhd, k_nhd, v_nhd = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        # The 2D rotary is applied in fp32 and cast back, as HF does.
        cos, sin = cos_nd[:, None, :], sin_nd[:, None, :]
        q32, k32 = q_nhd.astype(jnp.float32), k_nhd.astype(jnp.float32)
        q_nhd = (q32 * cos + _rotate_half(q32) * sin).astype(x_nd.dtype)
        k_nhd = (k32 * cos + _rotate_half(k32) * sin).astype(x_nd.dtype)
        scores_hqk = jnp.einsum("qhd,khd->hqk", q_nhd, k_nhd) * (self.head_dim ** -0.5)
        scores_hqk = jnp.where(same_segment_nn[None], scores_hqk.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        probs_hqk = jax.nn.softmax(scores_hqk, axis=-1).astype(x_nd.dtype)
        out_nhd = jnp.einsum("hqk,khd->qhd", probs_hqk, v_nhd)
        return self.proj(out_nhd.reshape(n, -1))


class VisionMLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=True, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.linear_fc1 = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.linear_fc2 = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, **kw)

    def __call__(self, x):
        # hidden_act "gelu_pytorch_tanh": the tanh approximation.
        return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=True))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype, rngs)
        self.norm2 = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype, rngs)
        self.attn = VisionAttention(cfg, dtype, rngs)
        self.mlp = VisionMLP(cfg, dtype, rngs)

    def __call__(self, x, cos, sin, same_segment):
        x = x + self.attn(self.norm1(x), cos, sin, same_segment)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """2x2 merge to one LLM token. Final merger: LN(D) then reshape; DeepStack: reshape then LN(4D)."""

    def __init__(self, cfg: VisionConfig, postshuffle_norm: bool, dtype, rngs: nnx.Rngs):
        self.merged_dim = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.postshuffle_norm = postshuffle_norm
        norm_dim = self.merged_dim if postshuffle_norm else cfg.hidden_size
        self.norm = _layer_norm(norm_dim, cfg.layer_norm_eps, dtype, rngs)
        kw = dict(use_bias=True, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.linear_fc1 = nnx.Linear(self.merged_dim, self.merged_dim, **kw)
        self.linear_fc2 = nnx.Linear(self.merged_dim, cfg.out_hidden_size, **kw)

    def __call__(self, x_nd):
        if self.postshuffle_norm:
            x = self.norm(x_nd.reshape(-1, self.merged_dim))
        else:
            x = self.norm(x_nd).reshape(-1, self.merged_dim)
        # Both merger kinds use exact (erf) GELU, unlike the blocks.
        return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=False))


class VisionTower(nnx.Module):
    """`model.visual`: patch embed, interpolated pos embed, blocks with 2D rotary, mergers."""

    def __init__(self, vision_config: VisionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs = None):
        cfg = vision_config
        if cfg.hidden_size % cfg.num_heads or cfg.head_dim % 4:
            raise ValueError(f"vision hidden_size {cfg.hidden_size} / num_heads {cfg.num_heads} must give a "
                             "head_dim divisible by 4 (2D rotary)")
        if any(not 0 <= i < cfg.depth for i in cfg.deepstack_visual_indexes):
            raise ValueError(f"deepstack_visual_indexes {cfg.deepstack_visual_indexes} must lie in [0, {cfg.depth})")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg
        self.dtype = dtype
        self.patch_embed = PatchEmbed(cfg, dtype, rngs)
        self.pos_embed = nnx.Embed(cfg.num_position_embeddings, cfg.hidden_size, dtype=dtype, param_dtype=dtype,
                                   rngs=rngs)
        self.blocks = nnx.List([VisionBlock(cfg, dtype, rngs) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg, False, dtype, rngs)
        self.deepstack_merger_list = nnx.List(
            [PatchMerger(cfg, True, dtype, rngs) for _ in cfg.deepstack_visual_indexes])

    def rotary(self, coords_hw) -> Tuple[jax.Array, jax.Array]:
        """cos/sin [N, head_dim] in fp32: first half of each half rotates by row, second by column."""
        quarter = self.config.head_dim // 4
        inv = 1.0 / (self.config.rope_theta ** (jnp.arange(quarter, dtype=jnp.float32) * 2.0
                                                 / (self.config.head_dim // 2)))
        ang_n2q = coords_hw.astype(jnp.float32)[:, :, None] * inv
        ang = ang_n2q.reshape(coords_hw.shape[0], 2 * quarter)
        ang = jnp.concatenate([ang, ang], axis=-1)
        return jnp.cos(ang), jnp.sin(ang)

    def __call__(self, pixel_values, vinputs: VisionInputs) -> Tuple[jax.Array, List[jax.Array]]:
        """pixel_values [N, C*T*P*P] in merge-window order -> (embeds [N/4, out], deepstack list)."""
        n = pixel_values.shape[0]
        if vinputs.segment_ids.shape[0] != n:
            raise ValueError(f"pixel_values has {n} patches but vinputs was prepared for "
                             f"{vinputs.segment_ids.shape[0]}")
        x = self.patch_embed(pixel_values)
        table = self.pos_embed.embedding.get_value().astype(jnp.float32)
        pos_nd = jnp.einsum("nk,nkd->nd", jnp.asarray(vinputs.pos_w, jnp.float32), table[vinputs.pos_idx])
        x = x + pos_nd.astype(x.dtype)
        cos, sin = self.rotary(jnp.asarray(vinputs.coords_hw))
        seg = jnp.asarray(vinputs.segment_ids)
        same_segment = seg[:, None] == seg[None, :]
        deepstack = []
        indexes = list(self.config.deepstack_visual_indexes)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, same_segment)
            if i in indexes:
                deepstack.append(self.deepstack_merger_list[indexes.index(i)](x))
        return self.merger(x), deepstack
