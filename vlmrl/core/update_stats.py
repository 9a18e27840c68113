"""What one PPO update does to each part of Qwen3-VL, reduced on device to a few KB.

The parameter tree is cut into rows: per text layer and query head the head's q and o
slices plus the k and v slices of the kv head it reads (GQA shares those between the
heads of a group), per text layer its MLP and the whole layer, per vision block the
block, each patch merger, and a few leftovers (embeddings, final norm, vision input).
For each row and optimizer step the update takes two squared sums: of the gradient
(before clipping) and of the realised change Δw = w_after - w_before (what survived
rounding to the parameter dtype, not what the optimizer asked for); they are averaged
over the steps inside the scan. A third, of the weights, is taken once before the first
step. The host turns them into ‖g‖ = sqrt(mean g²) and ‖Δw‖/‖w‖ = sqrt(mean Δw²) / ‖w‖;
with one step per update both are exact. The layout of the rows is read off the
parameter tree itself (names as in the model), so any Qwen3-VL size works.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Tuple

import jax
import jax.numpy as jnp

from vlmrl.core.tree_paths import key_parts
from vlmrl.instrument.events import UPDATE_OTHER_ROWS as OTHER_ROWS, UPDATE_SEGMENTS as SEGMENTS

_TEXT = re.compile(r"model/language_model/layers/(\d+)/(.*)")
_VISION = re.compile(r"model/visual/blocks/(\d+)/")
_DEEPSTACK = re.compile(r"model/visual/deepstack_merger_list/(\d+)/")


def path_name(path) -> str:
    """'model/language_model/layers/0/self_attn/q_proj/kernel' for a tree key path."""
    return "/".join(p for p in key_parts(path) if p != "value")


@dataclasses.dataclass(frozen=True)
class UpdateLayout:
    """Where each parameter leaf lands among the rows (static: part of the jit cache key).

    `leaves[i]` is (segment, index, how) for the i-th leaf of the tree: how = "all" adds
    the leaf's squared sum to one row; "q"/"k"/"v"/"o" split a projection by head.
    """

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vision_depth: int
    mergers: int
    leaves: Tuple[Tuple[str, int, str], ...]

    @property
    def sizes(self) -> dict:
        L = self.num_layers
        return {"heads": L * self.num_heads, "mlp": L, "layer": L, "vision": self.vision_depth,
                "merger": self.mergers, "other": len(OTHER_ROWS)}

    @property
    def rows(self) -> int:
        return sum(self.sizes.values())

    @classmethod
    def build(cls, params, text_config, vision_depth: int) -> "UpdateLayout":
        """Read the rows off a parameter tree (nnx.State or any pytree with model names)."""
        tc = text_config
        leaves, mergers = [], 1
        for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
            name = path_name(path)
            m = _DEEPSTACK.match(name)
            if m:
                mergers = max(mergers, int(m.group(1)) + 2)
            leaves.append(_place(name))
        return cls(tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim,
                   vision_depth, mergers, tuple(leaves))


def _place(name: str) -> Tuple[str, int, str]:
    m = _TEXT.match(name)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
        proj = re.fullmatch(r"self_attn/([qkvo])_proj/kernel", rest)
        if proj:
            return ("heads", layer, proj.group(1))
        return ("mlp" if rest.startswith("mlp/") else "layer", layer, "all")
    m = _VISION.match(name)
    if m:
        return ("vision", int(m.group(1)), "all")
    m = _DEEPSTACK.match(name)
    if m:
        return ("merger", int(m.group(1)) + 1, "all")
    if name.startswith("model/visual/merger/"):
        return ("merger", 0, "all")
    if "embed_tokens" in name or name.startswith("lm_head"):
        return ("other", OTHER_ROWS.index("embed"), "all")
    if name.startswith("model/visual/"):
        return ("other", OTHER_ROWS.index("vision in"), "all")
    return ("other", OTHER_ROWS.index("rest"), "all")


def row_squares(layout: UpdateLayout, tree) -> jax.Array:
    """float32 [layout.rows]: the squared sum of `tree` over each row, in SEGMENTS order."""
    L, H, KV, hd = layout.num_layers, layout.num_heads, layout.num_kv_heads, layout.head_dim
    seg = {name: [jnp.zeros((), jnp.float32)] * n for name, n in layout.sizes.items() if name != "heads"}
    heads = [[jnp.zeros((H,), jnp.float32)] for _ in range(L)]
    leaves = jax.tree_util.tree_leaves(tree)
    if len(leaves) != len(layout.leaves):
        raise ValueError(f"update stats: the tree has {len(leaves)} leaves, the layout {len(layout.leaves)}")
    for x, (segment, i, how) in zip(leaves, layout.leaves):
        sq = jnp.square(x.astype(jnp.float32))
        if how == "all":
            seg[segment][i] = seg[segment][i] + jnp.sum(sq)
            continue
        if how in ("q", "k", "v"):  # kernels [D, heads * hd]: columns by head
            n = H if how == "q" else KV
            per = jnp.sum(sq.reshape(sq.shape[0], n, hd), axis=(0, 2))
        else:  # o_proj [H * hd, D]: rows by head
            per = jnp.sum(sq.reshape(H, hd, sq.shape[-1]), axis=(1, 2))
        if per.shape[0] != H:
            per = jnp.repeat(per, H // KV)  # each query head reads its group's k and v
        heads[i].append(per)
        seg["layer"][i] = seg["layer"][i] + jnp.sum(per if how in ("q", "o") else per[::H // KV])
    head_rows = [sum(h) for h in heads]
    parts = {"heads": jnp.concatenate(head_rows) if L else jnp.zeros((0,), jnp.float32)}
    for name in ("mlp", "vision", "merger", "other", "layer"):
        parts[name] = jnp.stack(seg[name]) if seg[name] else jnp.zeros((0,), jnp.float32)
    parts["layer"] = parts["layer"] + parts["mlp"]  # a layer row holds its MLP too
    return jnp.concatenate([parts[name] for name in SEGMENTS])


@dataclasses.dataclass(frozen=True)
class UpdateTap:
    """Static switch for the update taps: `make_update(..., stats=UpdateTap(layout, cb))`.

    `callback(buffer)` gets the packed float32 payload once per update on the host
    (`vlmrl.instrument.tap_host.unpack_update` reads it)."""

    layout: UpdateLayout
    callback: Callable
