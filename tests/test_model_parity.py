"""fp32 logits parity of vlmrl's Qwen3VL against transformers' Qwen3VLForConditionalGeneration.

Two tiny random checkpoints (every parameter randomised, docs/qwen3vl.md §10):
  A: GQA 4q/2kv, tied embeddings, DeepStack from vision blocks (0, 1) into decoder layers 0, 1
  B: GQA 4q/1kv, untied lm_head, DeepStack from vision block 1 into decoder layer 0
Bar: max |logit difference| <= 1e-4 (measured about 2e-6).
"""
import numpy as np
import pytest

from conftest import hf_forward, left_pad, make_prompt

pytestmark = pytest.mark.slow
TOL = 1e-4
CONFIGS = {
    "kv2_tied_ds01": dict(num_kv_heads=2, tie=True, deepstack=(0, 1)),
    "kv1_untied_ds1": dict(num_kv_heads=1, tie=False, deepstack=(1,)),
}
TWO_IMAGES = [("text", 3), ("image", (1, 4, 6)), ("text", 2), ("image", (1, 6, 2)), ("text", 4)]


_LOADED = {}


def _load_pair(hf_factory, name):
    """(hf_model, our fp32 model loaded from the same saved directory, checkpoint path)."""
    from vlmrl.models.qwen3vl import load_hf_checkpoint

    if name not in _LOADED:
        hf, path = hf_factory(**CONFIGS[name])
        _LOADED[name] = (hf, load_hf_checkpoint(path)[0], path)
    return _LOADED[name]


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, hf_factory):
    return _load_pair(hf_factory, request.param)


@pytest.fixture(scope="module")
def pair_a(hf_factory):
    return _load_pair(hf_factory, "kv2_tied_ds01")


def _maxdiff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def test_text_only(pair):
    hf, model, _ = pair
    ids, _, _ = make_prompt(hf.config.text_config.vocab_size, [("text", 11)], seed=3)
    ref = hf_forward(hf, ids)
    out = np.asarray(model(ids))
    assert out.shape == ref.shape == (1, 11, hf.config.text_config.vocab_size)
    assert _maxdiff(out, ref) <= TOL


def test_two_images_of_different_grids(pair):
    hf, model, name = pair
    ids, pv, grid = make_prompt(hf.config.text_config.vocab_size, TWO_IMAGES, seed=4)
    ref = hf_forward(hf, ids, None, pv, grid)
    out = np.asarray(model(ids, pv, grid))
    assert _maxdiff(out, ref) <= TOL, name
    # The images must matter: the same ids with other pixels give other logits.
    other = np.asarray(model(ids, pv[::-1].copy(), grid))
    assert _maxdiff(other, out) > 100 * TOL


def test_one_image(pair_a):
    hf, model, _ = pair_a
    ids, pv, grid = make_prompt(hf.config.text_config.vocab_size, [("text", 2), ("image", (1, 6, 4)), ("text", 5)],
                                seed=5)
    assert _maxdiff(model(ids, pv, grid), hf_forward(hf, ids, None, pv, grid)) <= TOL


def test_deepstack_changes_logits_only_after_images(pair_a):
    """DeepStack must be on (parity above includes it) and touch visual rows only: zeroing the
    DeepStack mergers' output layer changes logits at and after the image, not before it."""
    hf, model, path = pair_a
    from vlmrl.models.qwen3vl import load_hf_checkpoint

    ids, pv, grid = make_prompt(hf.config.text_config.vocab_size, TWO_IMAGES, seed=4)
    base = np.asarray(model(ids, pv, grid))
    off, _ = load_hf_checkpoint(path)
    for m in off.model.visual.deepstack_merger_list:
        m.linear_fc2.kernel.set_value(m.linear_fc2.kernel.get_value() * 0)
        m.linear_fc2.bias.set_value(m.linear_fc2.bias.get_value() * 0)
    changed = np.asarray(off(ids, pv, grid))
    first_image = int(np.argmax(ids == hf.config.image_token_id))
    assert _maxdiff(changed[:, :first_image], base[:, :first_image]) == 0.0
    assert _maxdiff(changed[:, first_image:], base[:, first_image:]) > 100 * TOL


def test_left_padded_batch_matches_each_row_alone(pair):
    """Row 0: two images, left padded; row 1: a longer text-only prompt. Each row's logits at its
    real positions equal the row run alone (ours) and HF's."""
    hf, model, _ = pair
    V = hf.config.text_config.vocab_size
    ids0, pv0, g0 = make_prompt(V, TWO_IMAGES, seed=6)
    ids1, _, _ = make_prompt(V, [("text", len(ids0) + 5)], seed=7)
    ids, mask = left_pad([ids0, ids1])
    batch = np.asarray(model(ids, pv0, g0, attention_mask=mask))
    S = ids.shape[1]
    alone0 = np.asarray(model(ids0, pv0, g0))[0]
    alone1 = np.asarray(model(ids1))[0]
    assert _maxdiff(batch[0, S - len(ids0):], alone0) <= 1e-5
    assert _maxdiff(batch[1, S - len(ids1):], alone1) <= 1e-5
    assert _maxdiff(batch[0, S - len(ids0):], hf_forward(hf, ids0, None, pv0, g0)[0]) <= TOL
    assert np.isfinite(batch).all()  # padded query rows stay finite (no NaN leaks into real rows)


def test_image_token_count_mismatch_is_a_clear_error(pair):
    hf, model, _ = pair
    ids, pv, grid = make_prompt(hf.config.text_config.vocab_size, TWO_IMAGES, seed=4)
    extra_pad = np.concatenate([ids, [hf.config.image_token_id]])
    with pytest.raises(ValueError, match="image pad tokens"):
        model(extra_pad, pv, grid)
    with pytest.raises(ValueError, match="image pad tokens"):
        model(ids)  # pads but no pixels
    with pytest.raises(ValueError, match="together"):
        model(ids, pv, None)
    with pytest.raises(ValueError, match="video"):
        model(np.asarray([5, hf.config.video_token_id, 6]))
    with pytest.raises(ValueError, match="token ids must lie"):
        model(np.asarray([5, hf.config.text_config.vocab_size]))


def test_head_dim_independent_of_hidden_over_heads(hf_factory):
    """Like Qwen3-VL-4B (32 heads x 128 != 2560): head_dim comes from the config, never hidden/heads."""
    from vlmrl.models.qwen3vl import load_hf_checkpoint

    hf, path = hf_factory(num_kv_heads=2, tie=True, deepstack=(0,), head_dim=32, mrope_section=(6, 5, 5),
                          vocab_size=4096)
    model, cfg = load_hf_checkpoint(path)
    assert cfg.text.head_dim * cfg.text.num_attention_heads != cfg.text.hidden_size
    ids, pv, grid = make_prompt(4096, [("text", 4), ("image", (1, 4, 4)), ("text", 3)], seed=8)
    assert _maxdiff(model(ids, pv, grid), hf_forward(hf, ids, None, pv, grid)) <= TOL
