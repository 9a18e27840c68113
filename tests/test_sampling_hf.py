"""Greedy sampling with the real Qwen3VL equals Hugging Face `generate` for 32 tokens,
for a left-padded text batch and for image prompts (the tiny random checkpoint)."""
import numpy as np
import pytest

from conftest import hf_generate, left_pad, make_prompt

pytestmark = pytest.mark.slow

V = 152000
N_NEW = 32


@pytest.fixture(scope="module")
def sampler(hf_tiny):
    from vlmrl.core.sampling import Sampler, SamplingConfig
    from vlmrl.models.qwen3vl import load_hf_checkpoint

    hf, path = hf_tiny
    model = load_hf_checkpoint(path)[0]
    # the oracle's generate never stops early, so neither do we
    return hf, Sampler(model, SamplingConfig(stop_ids=(), pad_id=0))


def _first_divergence(ours, ref):
    bad = np.argwhere(ours != ref)
    return None if len(bad) == 0 else tuple(int(x) for x in bad[0])


def test_greedy_text_batch_equals_hf_generate(sampler):
    hf, s = sampler
    rows = [make_prompt(V, [("text", n)], seed=n)[0] for n in (9, 17)]
    ids, mask = left_pad(rows)
    ref = hf_generate(hf, ids, mask, max_new_tokens=N_NEW)
    out = s.generate(prompts=rows, max_new_tokens=N_NEW)
    assert out.tokens.shape == ref.shape
    bad = _first_divergence(out.tokens, ref)
    assert bad is None, f"first divergence at (row, step) {bad}"


@pytest.mark.parametrize("grids", [((1, 6, 2), (1, 4, 4))])
def test_greedy_image_prompt_equals_hf_generate(sampler, grids):
    hf, s = sampler
    segs = [("text", 3)]
    for g in grids:
        segs += [("image", g), ("text", 4)]
    ids, pv, grid = make_prompt(V, segs, seed=len(grids))
    ref = hf_generate(hf, ids[None], None, pv, grid, max_new_tokens=N_NEW)
    out = s.generate(prompts=[ids], pixel_values=pv, image_grid_thw=grid, max_new_tokens=N_NEW)
    assert _first_divergence(out.tokens, ref) is None, f"first divergence at {_first_divergence(out.tokens, ref)}"


def test_image_and_text_rows_in_one_left_padded_batch_match_hf(sampler):
    hf, s = sampler
    img_ids, pv, grid = make_prompt(V, [("text", 2), ("image", (1, 4, 4)), ("text", 5)], seed=7)
    txt_ids = make_prompt(V, [("text", 6)], seed=8)[0]
    ids, mask = left_pad([img_ids, txt_ids])
    ref = hf_generate(hf, ids, mask, pv, grid, max_new_tokens=N_NEW)
    out = s.generate(prompts=[img_ids, txt_ids], pixel_values=pv, image_grid_thw=grid, max_new_tokens=N_NEW)
    assert _first_divergence(out.tokens, ref) is None, f"first divergence at {_first_divergence(out.tokens, ref)}"
