"""The sampler: cached batched decode equals step-by-step recomputation, sampling controls,
per-sequence stop ids, determinism, bucketed jit cache, input errors, and parity with HF
`generate` on the real tiny model (text and image prompts)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fake_sampler_kwargs, tiny_fake
from vlmrl.core.sampling import Sampler, SamplingConfig, sample_logits


@pytest.fixture(scope="module")
def fake():
    return tiny_fake()


@pytest.fixture(scope="module")
def plain(fake):
    """One greedy sampler shared by the tests (batch 2, prompt bucket 64, 16 new-token bucket)."""
    return Sampler(fake, SamplingConfig(stop_ids=()), **fake_sampler_kwargs())


def _prompts(seed=0, lens=(7, 12)):
    rng = np.random.default_rng(seed)
    return [rng.integers(2, 100_000, n) for n in lens]


def _teacher_forced_argmax(model, prompt, generated):
    """argmax of an uncached forward over prompt + generated at the positions that chose each token."""
    from conftest import FakeCache

    seq = np.concatenate([prompt, generated[:-1]])[None]
    cache = FakeCache.init(model.config, 1, seq.shape[1])
    logits, _, _ = model.forward(jnp.asarray(seq), jnp.ones(seq.shape, bool), None, cache=cache)
    return np.argmax(np.asarray(logits[0, len(prompt) - 1:]), axis=-1).tolist()


def test_batched_cached_greedy_equals_uncached_recomputation_per_row(fake, plain):
    prompts = _prompts()
    out = plain.generate(prompts=prompts, max_new_tokens=8)
    assert out.tokens.shape == (2, 8) and out.mask.all() and (out.lengths == 8).all()
    for r, p in enumerate(prompts):
        assert out.tokens[r].tolist() == _teacher_forced_argmax(fake, p, out.tokens[r]), f"row {r}"
    # greedy logprobs are those of the argmax token: the highest of the distribution
    assert (out.logprobs <= 0).all() and (out.entropy >= 0).all()


def test_padded_input_ids_with_mask_match_prompt_lists(plain):
    prompts = _prompts(1, (5, 9))
    s = plain
    a = s.generate(prompts=prompts, max_new_tokens=5)
    # the same prompts right-padded by a caller are re-packed to the left
    ids = np.zeros((2, 9), np.int64)
    mask = np.zeros((2, 9), np.int64)
    for i, p in enumerate(prompts):
        ids[i, :len(p)], mask[i, :len(p)] = p, 1
    b = s.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_stop_ids_end_each_row_separately_and_pad_the_rest(fake, plain):
    prompts = _prompts(2, (6, 6))
    free = plain.generate(prompts=prompts, max_new_tokens=12)
    stop = int(free.tokens[0, 3])  # row 0 emits this at step 3
    assert stop not in free.tokens[1].tolist(), "pick prompts whose second row never emits the stop id"
    cfg = SamplingConfig(stop_ids=(stop, 999_999), pad_id=7)
    out = Sampler(fake, cfg, **fake_sampler_kwargs()).generate(prompts=prompts, max_new_tokens=12)
    first = free.tokens[0].tolist().index(stop)
    assert out.lengths.tolist() == [first + 1, 12]
    assert out.tokens[0, :first + 1].tolist() == free.tokens[0, :first + 1].tolist()
    assert (out.tokens[0, first + 1:] == 7).all()
    assert out.finished.tolist() == [True, False]
    assert out.mask[0].sum() == first + 1 and (out.logprobs[0, first + 1:] == 0).all()
    np.testing.assert_array_equal(out.tokens[1], free.tokens[1])


def test_sampling_is_deterministic_under_a_key_and_varies_across_keys(plain):
    s = plain
    kw = dict(prompts=_prompts(3, (4, 4)), max_new_tokens=16, temperature=1.5)
    a = s.generate(key=jax.random.PRNGKey(1), **kw)
    b = s.generate(key=jax.random.PRNGKey(1), **kw)
    c = s.generate(key=jax.random.PRNGKey(2), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert (a.tokens != c.tokens).any()


def test_top_k_one_and_tiny_top_p_reduce_to_greedy(plain):
    s = plain
    prompts = _prompts(4, (5, 8))
    greedy = s.generate(prompts=prompts, max_new_tokens=6)
    k1 = s.generate(prompts=prompts, max_new_tokens=6, temperature=2.0, top_k=1, key=jax.random.PRNGKey(3))
    p0 = s.generate(prompts=prompts, max_new_tokens=6, temperature=2.0, top_p=1e-6, key=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(k1.tokens, greedy.tokens)
    np.testing.assert_array_equal(p0.tokens, greedy.tokens)


def test_sample_logits_support_and_frequencies():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.PRNGKey(0)

    def freq(**kw):
        tok, lp, ent, _ = sample_logits(logits, keys, 1.0, kw.pop("top_p", 1.0), greedy=False, **kw)
        return np.bincount(np.asarray(tok), minlength=4) / 4000, np.asarray(lp), np.asarray(ent)

    f, lp, ent = freq(top_k=0, use_top_p=False)
    np.testing.assert_allclose(f, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    np.testing.assert_allclose(ent[0], -np.sum([p * np.log(p) for p in (0.5, 0.3, 0.15, 0.05)]), rtol=1e-5)
    f, _, _ = freq(top_k=2, use_top_p=False)
    assert f[2] == f[3] == 0 and abs(f[0] - 0.5 / 0.8) < 0.03
    f, _, _ = freq(top_k=0, use_top_p=True, top_p=0.7)  # 0.5 < 0.7 needs the second token, not the third
    assert f[2] == f[3] == 0 and f[1] > 0.3
    f, _, _ = freq(top_k=3, use_top_p=True, top_p=0.85)
    assert f[3] == 0 and f[2] > 0.1


def test_new_length_in_the_same_bucket_does_not_recompile(plain):
    s = plain
    s.generate(prompts=_prompts(5, (10, 3)), max_new_tokens=5)
    before = s._jit._cache_size()
    s.generate(prompts=_prompts(6, (20, 31)), max_new_tokens=9)
    s.generate(prompts=_prompts(7, (40, 2)), max_new_tokens=16)
    out = s.generate(prompts=_prompts(7, (64, 1)), max_new_tokens=13)
    assert s._jit._cache_size() == before  # lengths 5..16 and 1..64 share buckets
    assert out.tokens.shape == (2, 13) and out.prompt_ids.shape == (2, 64)


@pytest.mark.parametrize("kw, match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(top_p=0.0), "top_p"),
    (dict(prompts=[np.array([], np.int64)]), "at least one token"),
    (dict(prompts=None), "prompts"),
    (dict(prompts=[np.array([5, 151655])]), "image tokens"),
])
def test_bad_input_names_the_culprit(plain, kw, match):
    s = plain
    args = dict(prompts=[np.array([5, 6, 7])], max_new_tokens=4)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        s.generate(**args)
