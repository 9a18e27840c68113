"""bf16 params and activations, with fp32 softmax/RMSNorm variance and fp32 rope angles, against
HF's own bf16 model (docs/qwen3vl.md §9). Tolerances are loose: bf16 has 8 mantissa bits, so one
ulp of a logit near 2 is 0.0156; measured max |diff| is about 2 ulps, mean about 0.003."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import greedy_generate, hf_forward, load_reference, make_prompt

pytestmark = pytest.mark.slow
PROMPTS = {
    "text": [("text", 11)],
    "two_images": [("text", 3), ("image", (1, 4, 6)), ("text", 2), ("image", (1, 6, 2)), ("text", 4)],
}


@pytest.fixture(scope="module")
def models(hf_factory):
    from vlmrl.models.qwen3vl import load_hf_checkpoint

    hf32, path = hf_factory(num_kv_heads=2, tie=True, deepstack=(0, 1))
    return load_reference(path, "bfloat16"), hf32, load_hf_checkpoint(path, dtype=jnp.bfloat16)[0]


def test_params_are_bf16(models):
    _, _, model = models
    dtypes = {str(v.get_value().dtype) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert dtypes == {"bfloat16"}


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_bf16_logits_track_hf_bf16(models, kind):
    hf16, hf32, model = models
    ids, pv, grid = make_prompt(hf16.config.text_config.vocab_size, PROMPTS[kind], seed=2)
    out = model(ids, pv, grid)
    assert out.dtype == jnp.bfloat16  # HF returns logits in the model dtype too
    out = np.asarray(out.astype(jnp.float32))
    ref16 = hf_forward(hf16, ids, None, pv, grid)
    ref32 = hf_forward(hf32, ids, None, pv, grid)
    diff = np.abs(out - ref16)
    assert diff.max() <= 0.08 and diff.mean() <= 0.006, (diff.max(), diff.mean())
    assert np.abs(out - ref32).max() <= 0.08  # and stays near the fp32 truth
    assert (out.argmax(-1) == ref16.argmax(-1)).mean() >= 0.9


def test_bf16_cached_decode_tracks_full_forward(models):

    hf16, _, model = models
    ids, _, _ = make_prompt(hf16.config.text_config.vocab_size, PROMPTS["text"], seed=3)
    tok, logits = greedy_generate(model, ids, max_new_tokens=6)
    full = np.asarray(model(np.concatenate([ids, tok[0, :-1]])).astype(jnp.float32))[0, len(ids) - 1:]
    assert np.isfinite(logits).all()
    assert np.abs(logits[0] - full).max() <= 0.08
