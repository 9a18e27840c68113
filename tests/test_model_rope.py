"""Interleaved mRoPE against HF's own rotary module, and its fp32 angle arithmetic."""
import jax.numpy as jnp
import numpy as np
import pytest

from vlmrl.models.qwen3vl.rope import apply_rope, inv_freq, mrope_axis_of_freq, rotate_half, text_cos_sin


def test_axis_pattern_for_real_sections():
    axis = mrope_axis_of_freq(128, (24, 20, 20))
    assert "".join("THW"[a] for a in axis) == "THW" * 20 + "TTTT"
    assert np.bincount(axis).tolist() == [24, 20, 20]


def test_tiny_section_counts_follow_the_slice_rule():
    # [2,3,3] with hd 16 (8 frequencies): H takes j=1,4,7 (<9), W takes j=2,5 (<9), T the rest;
    # so the real counts are T3/H3/W2, not the section values (docs/qwen3vl.md §10.1).
    axis = mrope_axis_of_freq(16, (2, 3, 3))
    assert "".join("THW"[a] for a in axis) == "THWTHWTH"
    assert "".join("THW"[a] for a in mrope_axis_of_freq(16, (4, 1, 2))) == "THWTTWTT"


@pytest.mark.parametrize("hd,section", [(16, (2, 3, 3)), (128, (24, 20, 20)), (32, (6, 5, 5))])
def test_cos_sin_equal_hf_rotary(hd, section):
    torch = pytest.importorskip("torch")
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextConfig, Qwen3VLTextRotaryEmbedding

    cfg = Qwen3VLTextConfig(hidden_size=hd * 2, num_attention_heads=2, head_dim=hd, rope_theta=5e6,
                            rope_scaling={"rope_type": "default", "mrope_section": list(section),
                                          "mrope_interleaved": True})
    rot = Qwen3VLTextRotaryEmbedding(cfg)
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 5000, size=(3, 2, 7))  # distinct t/h/w rows expose any interleaving error
    x = torch.zeros(2, 7, hd)
    cos_ref, sin_ref = rot(x, torch.from_numpy(pos))
    cos, sin = text_cos_sin(pos, hd, 5e6, section, jnp.float32)
    # torch's vectorised fp32 pow is not correctly rounded and its result depends on the CPU's
    # vector unit: an inv_freq may differ by one ulp from ours. At position p that moves the
    # angle, and so cos/sin, by up to p * |d inv_freq| (about 1e-4 for p near 5000 and
    # inv_freq near 0.2), so the tolerance is derived from the difference actually seen.
    ours, theirs = np.asarray(inv_freq(hd, 5e6)), rot.inv_freq.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=2.5e-7, atol=0)
    tol = float(pos.max()) * float(np.abs(ours - theirs).max()) + 2e-6
    np.testing.assert_allclose(np.asarray(cos), cos_ref.numpy(), atol=tol)
    np.testing.assert_allclose(np.asarray(sin), sin_ref.numpy(), atol=tol)
    # Short positions leave the one-ulp inv_freq difference almost no room to grow.
    short = np.asarray(text_cos_sin(pos % 64, hd, 5e6, section, jnp.float32)[0])
    tol_short = 63.0 * float(np.abs(ours - theirs).max()) + 1e-6
    np.testing.assert_allclose(short, rot(x, torch.from_numpy(pos % 64))[0].numpy(), atol=tol_short)


def test_angles_are_fp32_even_for_bf16_at_long_positions():
    pos = np.full((3, 1, 1), 200_000)
    cos16, sin16 = text_cos_sin(pos, 128, 5e6, (24, 20, 20), jnp.bfloat16)
    cos32, sin32 = text_cos_sin(pos, 128, 5e6, (24, 20, 20), jnp.float32)
    assert cos16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(cos16), np.asarray(cos32.astype(jnp.bfloat16)))
    np.testing.assert_array_equal(np.asarray(sin16), np.asarray(sin32.astype(jnp.bfloat16)))


def test_rotate_half_is_split_halves_and_rope_preserves_norm():
    x = jnp.arange(8.0).reshape(1, 1, 1, 8)
    assert rotate_half(x).reshape(-1).tolist() == [-4, -5, -6, -7, 0, 1, 2, 3]
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((1, 5, 2, 16)), jnp.float32)
    cos, sin = text_cos_sin(rng.integers(0, 100, (3, 1, 5)), 16, 1e4, (2, 3, 3), jnp.float32)
    out = apply_rope(q, cos, sin)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-5)
