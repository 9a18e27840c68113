"""What a valid event may hold: the types and bounds `events.validate` enforces.

Events come from other machines, other versions and crafted files. A value that passes a
type check can still break a panel (an int too large for float(), a RunInfo of 10**300
layers, a 1 MB token text kept in every cache), so each field has a type and a range
here, and an event with any field outside them is rejected whole by `events.validate`.
Bounds are far above any real run's (Qwen3-VL 8B: 36 layers x 32 heads, 262144 positions).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict

import numpy as np

MAX_TEXT = 1024  # characters in one string field (a token's text is a few)
MAX_LIST = 1 << 16  # entries in a list field (credit tokens, matrix token texts)
MAX_LIST_TEXT = 1 << 20  # characters in all the strings of one list field together
MAX_TOP_K = 256
MAX_STATS = 16  # attention statistics in one event
MAX_STAT_CELLS = 1 << 16  # layers x heads of one statistic
MAX_ROW = 1 << 20  # key slots in one attention row
MAX_MATRIX_CELLS = 1 << 22  # cells of one attention matrix
MAX_INT = (1 << 63) - 1
MAX_LAYERS = 4096  # layers, heads, vision depth, deepstack indexes
# The image view: an image travels downsampled to at most IMAGE_MAX_W x IMAGE_MAX_H RGB
# pixels (34.6 KB of uint8; two pixels a cell, so a 240-column terminal shows two side by
# side at full size), at most IMAGE_MAX_COUNT per sample. A step's attention on the image
# is float16 [layers, cells] of at most IMAGE_ATTN_BYTES: at the 2B shape (28 layers) 292
# cells, one a token up to 292 tokens (a 448x448 image has 196), merged patches pooled f x f
# beyond; the largest emit (4 rows of stats, a context of 8192, 292 cells) is 61.8 KB,
# inside the 64 KB per-emit budget (docs/image_view.md).
IMAGE_MAX_W, IMAGE_MAX_H = 120, 96
IMAGE_MAX_COUNT = 16
IMAGE_ATTN_BYTES = 16 << 10
IMAGE_ATTN_TOKENS = 4096  # tokens of one event whatever its layers (a 2-layer model: 4096)
_INT_TYPES = (int, np.integer)
_REAL_TYPES = (int, float, np.integer, np.floating)


def _int(v: Any, hi: int = MAX_INT, lo: int = 0) -> bool:
    return isinstance(v, _INT_TYPES) and not isinstance(v, bool) and lo <= v <= hi


def _real(v: Any) -> bool:
    """A number float() takes: finite ints within float range, any float (inf/nan allowed)."""
    if isinstance(v, bool) or not isinstance(v, _REAL_TYPES):
        return False
    return isinstance(v, (float, np.floating)) or abs(v) <= 1e308


def _finite(v: Any) -> bool:
    return _real(v) and math.isfinite(v)


def _prob(v: Any) -> bool:
    return _real(v) and (math.isnan(v) or 0.0 <= v <= 1.0)


def _text(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= MAX_TEXT


def _texts(v: Any) -> bool:
    return (isinstance(v, list) and len(v) <= MAX_LIST and all(isinstance(t, str) for t in v)
            and sum(map(len, v)) <= MAX_LIST_TEXT)


def _reals(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= MAX_LIST and all(map(_real, v))


def _array(ndim: int, cells: int) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return (isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.ndim == ndim and v.size <= cells
                and min(v.shape, default=1) > 0)
    return check


_stat = _array(2, MAX_STAT_CELLS)


def _stats(v: Any) -> bool:
    return (isinstance(v, dict) and len(v) <= MAX_STATS
            and all(isinstance(k, str) and len(k) <= 64 and _stat(a) for k, a in v.items()))


def _ints_tuple(n: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, tuple) and len(v) == n and all(map(_int, v))


def _top_k(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= MAX_TOP_K and all(
        isinstance(t, tuple) and len(t) == 3 and _int(t[0]) and _text(t[1]) and _prob(t[2]) for t in v)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_index = _int  # keys and sizes: non-negative, within int64
_layers = lambda v: _int(v, MAX_LAYERS)  # noqa: E731
_count = lambda v: _int(v, 1 << 20)  # noqa: E731
_wall = _finite

MAX_DEVICES = 1 << 16  # devices of one run (a mesh axis, the per-device memory tuples)


def _device_bytes(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) <= MAX_DEVICES and all(map(_index, v))


# kind -> field -> check; a field not named here is checked by its type alone.
FIELDS: Dict[str, Dict[str, Callable[[Any], bool]]] = {
    "run_info": {
        "model_name": _text, "num_layers": _layers, "num_heads": _layers, "num_kv_heads": _layers,
        "head_dim": lambda v: _int(v, 1 << 16), "dtype": _text, "max_cache": lambda v: _int(v, 1 << 40),
        "batch": _count, "vision_depth": _layers,
        "deepstack_layers": lambda v: isinstance(v, tuple) and len(v) <= MAX_LAYERS and all(map(_layers, v)),
        "device_kind": _text, "device_memory_in_use": _optional(_index), "device_memory_limit": _optional(_index),
        "process_index": _count, "process_count": _count, "status": _text, "wall_time": _wall,
        "device_count": lambda v: _int(v, MAX_DEVICES, 1),
        "mesh_shape": lambda v: isinstance(v, tuple) and len(v) in (0, 3) and all(_int(x, MAX_DEVICES, 1) for x in v),
        "devices_memory_in_use": _device_bytes, "devices_memory_limit": _device_bytes,
    },
    "decode": {
        "step": _index, "token_id": _index, "token_text": _text, "token_prob": _prob, "cache_len": _index,
        "cache_max": _index, "active_layer": _layers, "active_head": _layers, "mrope_t": _index,
        "mrope_h": _index, "mrope_w": _index, "attention_pattern": _optional(_stat), "seq_index": _index,
        "generation": _index, "batch_size": _count, "logprob": _real, "entropy": _real, "top_k": _top_k,
        "attn_stats": _stats, "vision_span": _optional(_ints_tuple(2)), "vision_grid": _optional(_ints_tuple(3)),
        "kv_bytes": _optional(_index), "attention_row": _optional(_array(1, MAX_ROW)), "phase": _text,
        "wall_time": _wall,
    },
    "training": {
        "step": _index, "reward_mean": _real, "reward_std": _real, "kl": _real, "loss": _real,
        "tokens_per_sec": _real, "gpu_util": _optional(_real), "policy_entropy": _optional(_real),
        "clip_fraction": _optional(_real), "grad_norm": _optional(_real), "learning_rate": _optional(_real),
        "update_tokens_per_sec": _optional(_real), "wall_time": _wall,
    },
    "credit": {"tokens": _texts, "credits": _reals, "step": _index, "wall_time": _wall},
    "attention_matrix": {
        "layer": _optional(_layers), "head": _optional(_layers), "query_tokens": _texts, "key_tokens": _texts,
        "token_types": _texts, "matrix": _optional(_array(2, MAX_MATRIX_CELLS)), "pool": lambda v: _int(v, lo=1),
        "sliding_window": _optional(_index), "step": _index, "wall_time": _wall,
    },
    "run_end": {"step": _optional(_index), "reason": _text, "seconds": _real, "wall_time": _wall},
    # the group view checks how the parts fit together (store: group_data.check_group)
    "group": {
        "step": _index, "group": lambda v: _int(v, 1 << 16, 1), "prompts": _texts, "answers": _texts, "texts": _texts,
        "tokens": lambda v: isinstance(v, list) and len(v) <= MAX_TOP_K and all(map(_texts, v)),
        "lengths": _optional(lambda v: isinstance(v, np.ndarray) and v.ndim == 1 and v.size <= MAX_TOP_K),
        "rewards": _optional(_array(1, MAX_TOP_K)), "advantages": _optional(_array(1, MAX_TOP_K)),
        "metrics": lambda v: isinstance(v, dict) and len(v) <= MAX_STATS and all(
            isinstance(k, str) and isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.ndim == 2
            and a.size <= MAX_STAT_CELLS for k, a in v.items()),
        "wall_time": _wall,
    },
    "memory_plan": {
        **{name: _index for name in (
            "weights_bytes", "reference_bytes", "optimizer_bytes", "grads_bytes", "kv_bytes", "kv_bytes_paged",
            "activation_bytes", "attention_scores_bytes", "rollout_bytes", "score_bytes", "update_bytes",
            "resident_bytes", "per_device_bytes")},
        **{name: _optional(_index) for name in ("held_weights_bytes", "held_reference_bytes", "held_optimizer_bytes")},
        **{name: _text for name in ("model_name", "dtype", "optimizer_dtype", "mesh", "peak_phase")},
        "rows": _count, "cache_slots": lambda v: _int(v, 1 << 40), "wall_time": _wall,
    },
    # the update view checks how the rows fit together (store: update_math.checked_update)
    "update_stats": {
        "step": _index, "optimizer_steps": lambda v: _int(v, 1 << 20, 1), "grad_norm": _real, "grad_norm_max": _real,
        "clip_factor": _real, "head_grad": _optional(_stat), "head_ratio": _optional(_stat),
        **{f"{row}_{kind}": _optional(_array(1, MAX_LAYERS)) for row in ("mlp", "layer", "vision", "merger", "other")
           for kind in ("grad", "ratio")},
        "wall_time": _wall,
    },
}



def _image_pixels(v: Any) -> bool:
    return (isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 3 and v.shape[2] == 3
            and 0 < v.shape[0] <= IMAGE_MAX_H and 0 < v.shape[1] <= IMAGE_MAX_W)


def _image_grid(v: Any) -> bool:
    return (isinstance(v, tuple) and len(v) == 3 and all(_int(x, 1 << 16, 1) for x in v)
            and v[0] * v[1] * v[2] <= 1 << 24)


FIELDS["image"] = {
    "generation": _index, "seq_index": _index, "index": lambda v: _int(v, IMAGE_MAX_COUNT - 1),
    "count": lambda v: _int(v, IMAGE_MAX_COUNT, 1), "grid": _image_grid,
    "size": lambda v: isinstance(v, tuple) and len(v) == 2 and all(_int(x, 1 << 20) for x in v),
    "pixels": _image_pixels, "wall_time": _wall,
}
FIELDS["image_attention"] = {
    "generation": _index, "step": _index, "seq_index": _index, "phase": _text, "token_id": _index,
    "token_text": _text, "tokens": lambda v: _int(v, 1 << 24), "pool": lambda v: _int(v, 1 << 16, 1),
    "attention": lambda v: (_array(2, IMAGE_ATTN_BYTES // 2)(v) and v.shape[1] <= IMAGE_ATTN_TOKENS),
    "image_share": _array(1, MAX_LAYERS), "wall_time": _wall,
}

# By annotation, for fields of event kinds added later and not listed above.
BY_TYPE: Dict[str, Callable[[Any], bool]] = {
    "int": lambda v: _int(v, lo=-MAX_INT), "float": _real, "str": _text, "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict), "tuple": lambda v: isinstance(v, tuple),
    "np.ndarray": lambda v: isinstance(v, np.ndarray),
}


def check_for(kind: str, name: str, annotation: str) -> Callable[[Any], bool]:
    """The check of one field: the table above, else its annotation (Optional[...] allows None)."""
    check = FIELDS.get(kind, {}).get(name)
    if check is not None:
        return check
    ann = annotation.replace(" ", "")
    if ann.startswith("Optional[") and ann.endswith("]"):
        inner = BY_TYPE.get(ann[len("Optional["):-1])
        return _optional(inner) if inner is not None else (lambda v: True)
    return BY_TYPE.get(ann, lambda v: True)


def describe(value: Any) -> str:
    """A short account of a rejected value for the error message (never the whole value)."""
    if isinstance(value, np.ndarray):
        return f"array {value.dtype.name}{list(value.shape)}"
    if isinstance(value, dict) and len(value) <= 8:
        text = "{" + ", ".join(f"{str(k)[:20]!r}: {describe(v)}" for k, v in value.items()) + "}"
        return text if len(text) <= 120 else f"dict of {len(value)} entries"
    if isinstance(value, (str, list, tuple, dict)) and len(value) > 8:
        return f"{type(value).__name__} of length {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else f"{type(value).__name__} {text[:37]}..."
