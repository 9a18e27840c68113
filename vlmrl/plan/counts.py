"""Parameter counts of a Qwen3-VL model, from its configuration alone.

Every tensor the model holds (`vlmrl.models.qwen3vl.model.Qwen3VL`, the same set Hugging
Face's Qwen3VLForConditionalGeneration holds) is counted by its shape; nothing is built.
Tests compare the totals with the arrays a real run allocates and with transformers'
own model built on the meta device.
"""
from __future__ import annotations

from typing import Dict

from vlmrl.models.qwen3vl.config import Qwen3VLConfig

# Bytes per element of the dtypes the planner accepts (numpy has no bfloat16: 2 bytes).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1}
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16",
                 "fp8": "float8"}


def dtype_bytes(name: str) -> int:
    """Bytes per element of a dtype name ('bfloat16', 'bf16', 'float32', ...); ValueError if unknown."""
    key = DTYPE_ALIASES.get(str(name), str(name))
    if key not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[key]


def canonical_dtype(name: str) -> str:
    dtype_bytes(name)
    return DTYPE_ALIASES.get(str(name), str(name))


def text_counts(config: Qwen3VLConfig) -> Dict[str, int]:
    """Elements of the language model by part: embedding, decoder layers, final norm, lm_head."""
    t = config.text
    H, I, hd = t.hidden_size, t.intermediate_size, t.head_dim
    q, kv = t.num_attention_heads * hd, t.num_key_value_heads * hd
    attention = H * q + 2 * H * kv + q * H + 2 * hd          # q k v o projections, q_norm, k_norm
    mlp = 3 * H * I                                           # gate, up, down (no biases)
    layer = attention + mlp + 2 * H                           # + input / post-attention RMSNorm
    return {
        "embed_tokens": t.vocab_size * H,
        "layers": t.num_hidden_layers * layer,
        "norm": H,
        # a tied model has no lm_head tensor: the embedding is the output layer
        "lm_head": 0 if config.tie_word_embeddings else t.vocab_size * H,
    }


def vision_counts(config: Qwen3VLConfig) -> Dict[str, int]:
    """Elements of the vision tower by part: patch embed, position table, blocks, mergers."""
    v = config.vision
    D, I = v.hidden_size, v.intermediate_size
    patch_in = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size
    block = (2 * D                      # norm1 (scale + bias)
             + D * 3 * D + 3 * D        # qkv with bias
             + D * D + D                # proj with bias
             + 2 * D                    # norm2
             + D * I + I + I * D + D)   # fc1, fc2 with biases
    merged = D * v.spatial_merge_size ** 2

    def merger(norm_dim: int) -> int:
        return 2 * norm_dim + merged * merged + merged + merged * v.out_hidden_size + v.out_hidden_size

    return {
        "patch_embed": patch_in * D + D,
        "pos_embed": v.num_position_embeddings * D,
        "blocks": v.depth * block,
        "merger": merger(D),                                       # LayerNorm before the 2x2 shuffle
        "deepstack_mergers": len(v.deepstack_visual_indexes) * merger(merged),  # LayerNorm after it
    }


def param_counts(config: Qwen3VLConfig) -> Dict[str, int]:
    """{'text': n, 'vision': n, 'total': n} plus every part of both, as Python ints."""
    text, vision = text_counts(config), vision_counts(config)
    out = {f"text.{k}": v for k, v in text.items()}
    out.update({f"vision.{k}": v for k, v in vision.items()})
    out["text"] = sum(text.values())
    out["vision"] = sum(vision.values())
    out["total"] = out["text"] + out["vision"]
    return out


def kv_bytes_per_token(config: Qwen3VLConfig, dtype: str) -> int:
    """K and V bytes one cached token costs in one sequence, all layers."""
    t = config.text
    return 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * dtype_bytes(dtype)
