"""Every event type round-trips through to_dict -> JSON -> decode_event unchanged
(numpy dtypes and shapes, tuples, nested dicts), and bad input is named."""
import dataclasses
import json

import numpy as np
import pytest

from vlmrl.instrument.events import (ATTN_STATS, EVENT_TYPES, GROUP_METRICS, AttentionMatrix, CreditState,
                                     DecodeState, GroupState, ImageAttention, ImageState, MemoryPlan, RunEnd,
                                     RunInfo, TrainingState, UpdateStats, decode_event)


def _samples():
    rng = np.random.default_rng(0)
    stats = {n: rng.random((3, 4)).astype(np.float32) for n in ATTN_STATS}
    return [
        RunInfo(model_name="tiny", num_layers=3, num_heads=4, deepstack_layers=(0, 1), device_memory_in_use=123),
        DecodeState(step=7, token_id=42, token_text="héllo \x1b[31m", token_prob=0.25, cache_len=70, cache_max=80,
                    attention_pattern=stats["focus"], top_k=[(42, "a", 0.25), (7, "b", 0.1)], attn_stats=stats,
                    vision_span=(3, 9), vision_grid=(1, 4, 6), kv_bytes=1024,
                    attention_row=rng.random(70).astype(np.float32), phase="prefill"),
        TrainingState(step=3, reward_mean=0.5, kl=0.01, grad_norm=None, learning_rate=1e-5),
        CreditState(tokens=["a", "b"], credits=[0.5, -0.25], step=2),
        AttentionMatrix(layer=None, head=2, query_tokens=["x", "y"], key_tokens=["x", "y"],
                        token_types=["text", "vision"], matrix=rng.random((2, 2)).astype(np.float16), pool=4),
        RunEnd(step=41, reason="stopped", seconds=12.5),
        GroupState(step=5, group=2, prompts=["what colour?"], answers=["red"], texts=["red", "blue \x1b[2J"],
                   tokens=[["red", "<|im_end|>"], ["blue"]], lengths=np.array([2, 1], np.int32),
                   rewards=np.array([1.0, 0.0], np.float32), advantages=np.array([1.0, -1.0], np.float32),
                   metrics={m: np.array([[0.5, -1.0], [2.0, np.nan]], np.float32) for m in GROUP_METRICS}),
        MemoryPlan(model_name="2b", dtype="bfloat16", kv_bytes=1 << 33, per_device_bytes=5 << 30,
                   held_weights_bytes=4255064064),
        UpdateStats(step=5, optimizer_steps=4, grad_norm=2.5, grad_norm_max=3.0, clip_factor=0.45,
                    head_grad=rng.random((3, 4)).astype(np.float32), head_ratio=rng.random((3, 4)).astype(np.float32),
                    layer_ratio=np.array([1e-3, 0.0, 2e-4], np.float32), merger_ratio=rng.random(70).astype(np.float32)),
        ImageState(generation=3, index=1, count=2, grid=(1, 14, 14), size=(448, 448),
                   pixels=rng.integers(0, 256, (96, 96, 3)).astype(np.uint8)),
        ImageAttention(generation=3, step=4, token_text="red", tokens=196,
                       attention=rng.random((3, 196)).astype(np.float16), image_share=rng.random(3).astype(np.float32)),
    ]


def _equal(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("event", _samples(), ids=lambda e: e.kind)
def test_round_trip_through_json_preserves_every_field(event):
    data = json.loads(json.dumps(event.to_dict()))
    back = decode_event(data)
    assert type(back) is type(event)
    for f in dataclasses.fields(event):
        assert _equal(getattr(event, f.name), getattr(back, f.name)), f.name


def test_every_event_type_has_a_unique_kind_and_is_covered():
    assert {e.kind for e in _samples()} == set(EVENT_TYPES)


def test_unknown_kind_is_named_and_unknown_fields_are_ignored():
    with pytest.raises(ValueError, match="'bogus'"):
        decode_event({"kind": "bogus"})
    ev = decode_event({"kind": "decode", "step": 4, "from_a_newer_writer": 1})
    assert isinstance(ev, DecodeState) and ev.step == 4


def test_kv_bytes_per_token_counts_k_and_v_of_every_layer():
    info = RunInfo(num_layers=28, num_kv_heads=8, head_dim=128, dtype="bfloat16", batch=2)
    assert info.kv_bytes_per_token() == 2 * 28 * 8 * 128 * 2 * 2
    assert info.kv_bytes_per_token(batch=1) == 2 * 28 * 8 * 128 * 2
