"""KV-cache prefill/decode: equals the full forward at every position, continues exactly like HF
`generate` (which checks rope_deltas after images), runs inside lax.scan, and taps cost nothing
when off."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import greedy_generate, hf_generate, left_pad, make_prompt

pytestmark = pytest.mark.slow
IMAGE_PROMPT = [("text", 3), ("image", (1, 4, 6)), ("text", 2), ("image", (1, 6, 2)), ("text", 4)]


@pytest.fixture(scope="module")
def tied(hf_factory):
    from vlmrl.models.qwen3vl import load_hf_checkpoint

    hf, path = hf_factory(num_kv_heads=2, tie=True, deepstack=(0, 1))
    return hf, load_hf_checkpoint(path)[0]


@pytest.fixture(scope="module")
def untied(hf_factory):
    # Untied random heads give varied greedy continuations (tied ones tend to repeat a token).
    from vlmrl.models.qwen3vl import load_hf_checkpoint

    hf, path = hf_factory(num_kv_heads=1, tie=False, deepstack=(1,))
    return hf, load_hf_checkpoint(path)[0]


def _teacher_forced(model, ids, mask, pv, grid, n_prompt, max_len):
    """Prefill the first n_prompt columns, then feed the remaining columns one by one.
    Returns (prefill logits [B, n_prompt, V], decode logits [B, S - n_prompt, V], final cache)."""
    from vlmrl.models.qwen3vl import KVCache
    from vlmrl.models.qwen3vl.model import decode_fn, prefill_fn

    p_ids, p_mask, pos, pvx, vin = model.prepare_inputs(ids[:, :n_prompt], pv, grid, mask[:, :n_prompt])
    graphdef, state = nnx.split(model)
    cache = KVCache.init(model.config, ids.shape[0], max_len, jnp.float32)
    pre, cache, aux = prefill_fn(graphdef, state, p_ids, p_mask, pos, pvx, vin, cache)
    assert aux == {}
    steps = []
    for s in range(n_prompt, ids.shape[1]):
        lg, cache, _ = decode_fn(graphdef, state, jnp.asarray(ids[:, s], jnp.int32), cache)
        steps.append(lg)
    return np.asarray(pre), np.asarray(jnp.stack(steps, axis=1)), cache


def test_cached_decode_equals_full_forward_at_every_position(tied):
    hf, model = tied
    V = hf.config.text_config.vocab_size
    ids0, pv, grid = make_prompt(V, IMAGE_PROMPT + [("text", 8)], seed=11)
    ids1, _, _ = make_prompt(V, [("text", 14)], seed=12)
    ids, mask = left_pad([ids0, ids1])  # row 1 is left padded; rows share the write slot
    full = np.asarray(model(ids, pv, grid, attention_mask=mask))
    n_prompt = ids.shape[1] - 8
    pre, dec, cache = _teacher_forced(model, ids, mask, pv, grid, n_prompt, ids.shape[1] + 3)
    real = mask[:, :n_prompt].astype(bool)
    assert np.max(np.abs(pre - full[:, :n_prompt])[real]) <= 1e-5
    assert np.max(np.abs(dec - full[:, n_prompt:])) <= 1e-5
    assert int(cache.length) == ids.shape[1]
    assert np.array_equal(np.asarray(cache.valid[:, :ids.shape[1]]), mask.astype(bool))
    assert not np.asarray(cache.valid[:, ids.shape[1]:]).any()
    # the image row decodes from max prompt position + 1 (rope delta < 0), the padded text row
    # from its own length: position = length + delta
    n_img = int((ids0 == hf.config.image_token_id).sum())
    assert int(cache.rope_deltas[0]) < 0 < n_img
    assert int(cache.rope_deltas[1]) == len(ids1) - ids.shape[1]
    assert int(np.asarray(cache.vision).sum()) == n_img


def test_decode_step_runs_inside_lax_scan(tied):
    hf, model = tied
    from vlmrl.models.qwen3vl import KVCache
    from vlmrl.models.qwen3vl.model import prefill_fn

    V = hf.config.text_config.vocab_size
    ids, _, _ = make_prompt(V, [("text", 12)], seed=13)
    ids = ids[None]
    mask = np.ones_like(ids)
    full = np.asarray(model(ids))
    graphdef, state = nnx.split(model)
    p_ids, p_mask, pos, _, _ = model.prepare_inputs(ids[:, :6], attention_mask=mask[:, :6])
    _, cache, _ = prefill_fn(graphdef, state, p_ids, p_mask, pos, None, None, KVCache.init(model.config, 1, 16))

    @jax.jit
    def run(state, cache, toks):
        def body(c, t):
            lg, c, _ = nnx.merge(graphdef, state).decode_step(t, c)
            return c, lg
        return jax.lax.scan(body, cache, toks)

    cache, logits = run(state, cache, jnp.asarray(ids[0, 6:, None], jnp.int32))
    # text-only prefill may leave position_ids to the model (cumsum(mask) - 1)
    _, c2, _ = prefill_fn(graphdef, state, p_ids, p_mask, None, None, None, KVCache.init(model.config, 1, 16))
    assert int(c2.rope_deltas[0]) == 0 and int(c2.length) == 6
    assert np.max(np.abs(np.asarray(logits)[:, 0] - full[0, 6:])) <= 1e-5
    assert int(cache.length) == 12


@pytest.mark.parametrize("kind", ["text", "image"])
def test_greedy_32_tokens_identical_to_hf_generate(untied, kind):

    hf, model = untied
    V = hf.config.text_config.vocab_size
    segs = [("text", 9)] if kind == "text" else IMAGE_PROMPT
    ids, pv, grid = make_prompt(V, segs, seed=21)
    ref_tok, ref_logits = hf_generate(hf, ids, None, pv, grid, max_new_tokens=32, return_logits=True)
    tok, logits = greedy_generate(model, ids, pv, grid, max_new_tokens=32)
    assert np.max(np.abs(logits - ref_logits)) <= 1e-4
    assert tok.tolist() == ref_tok.tolist()
    assert len(set(tok[0].tolist())) > 4  # a real continuation, not one token repeated


def test_taps_off_add_nothing_and_on_report_stats(tied):
    from vlmrl.instrument.taps import TapConfig, attention_for_emit, matrix_of, pool_matrix
    from vlmrl.models.qwen3vl import KVCache

    hf, model = tied
    cfg = model.config
    L, H = cfg.text.num_hidden_layers, cfg.text.num_attention_heads
    cache = KVCache.init(cfg, 2, 8)
    tok = jnp.zeros((2,), jnp.int32)
    graphdef, state = nnx.split(model)

    def jaxpr(tap):
        return str(jax.make_jaxpr(lambda s, t, c: nnx.merge(graphdef, s).decode_step(t, c, tap))(state, tok, cache))

    assert jaxpr(None) == jaxpr(TapConfig(enabled=False))
    assert len(jaxpr(TapConfig(enabled=True))) > len(jaxpr(None))

    V = cfg.text.vocab_size
    ids, pv, grid = make_prompt(V, IMAGE_PROMPT, seed=31)
    p_ids, p_mask, pos, pvx, vin = model.prepare_inputs(ids, pv, grid)
    tap = TapConfig(enabled=True, matrix_layer=-1)
    T = ids.shape[0] + 4
    from vlmrl.models.qwen3vl.model import decode_fn, prefill_fn

    _, c, aux = prefill_fn(graphdef, state, p_ids, p_mask, pos, pvx, vin, KVCache.init(cfg, 1, T), tap)
    S = ids.shape[0]
    # the model hands over raw rows and probs; the taps reduce and pool them
    assert len(aux["attn_rows"]) == len(aux["attn_probs"]) == L and aux["attn_rows"][0].shape == (1, H, S)
    stats, row = attention_for_emit(tap, aux, 1, 0)
    assert stats.shape == (L, 1, H, 4) and row.shape == (S,)
    np.testing.assert_allclose(np.asarray(row).sum(-1), 1.0, atol=1e-5)
    mat = np.asarray(matrix_of(tap, aux["attn_probs"], 0))
    assert mat.shape == (S, S) and np.allclose(np.triu(mat, 1), 0)  # causal
    small = TapConfig(enabled=True, attention_stats=False, matrix_layer=0, matrix_head=1, matrix_max=8)
    pooled, f = pool_matrix(matrix_of(small, aux["attn_probs"], 0), 8, aux["key_valid"][0])
    assert pooled.shape == (8, 8) and f == -(-S // 8)  # pooled on device
    np.testing.assert_allclose(np.asarray(pooled).sum(-1), 1.0, atol=1e-5)
    stats = np.asarray(stats)
    assert ((stats >= 0) & (stats <= 1 + 1e-6)).all()
    assert stats[..., 2].max() > 0  # some attention lands on the image tokens
    lg, c2, aux2 = decode_fn(graphdef, state, jnp.asarray([5], jnp.int32), c, tap)
    stats2, row2 = attention_for_emit(tap, aux2, 1, 0)
    assert stats2.shape == (L, 1, H, 4) and row2.shape == (T,)
    assert float(np.asarray(row2)[S + 1:].sum()) == 0.0  # unwritten slots get nothing


def test_forward_gradients_are_finite_with_left_padding(tied):
    """PPO differentiates the uncached forward: padded rows must not leak NaN into the gradient."""
    hf, model = tied
    V = hf.config.text_config.vocab_size
    ids, mask = left_pad([make_prompt(V, [("text", 10)], seed=41)[0], make_prompt(V, [("text", 4)], seed=42)[0]])
    graphdef, params = nnx.split(model)
    ids_j, mask_j = jnp.asarray(ids, jnp.int32), jnp.asarray(mask)

    def loss(p):
        logits, _, _ = nnx.merge(graphdef, p).forward(ids_j, mask_j, None)
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        tok_lp = jnp.take_along_axis(logp, ids_j[:, 1:, None], axis=-1)[..., 0]
        return -(tok_lp * mask_j[:, 1:]).sum()

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
