"""Taps: off traces nothing, on emits exactly one callback per emitted step with a traced
stride, events carry what the dashboard shows, the callback never fails a step, the stride
adapts to a target rate, and the prefill matrix is pooled on device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import count_prim, fake_sampler_kwargs, tiny_fake
from vlmrl.core.sampling import Sampler, SamplingConfig
from vlmrl.instrument.bus import Bus
from vlmrl.instrument.events import ATTN_STATS
from vlmrl.instrument.tap_host import CallContext, TapHost
from vlmrl.instrument.taps import TapConfig, pool_factor, pool_layout, pool_matrix

ON = TapConfig(enabled=True)


def _prompts(lens=(7, 12), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(2, 100_000, n) for n in lens]


@pytest.fixture(scope="module")
def fake():
    return tiny_fake()


@pytest.fixture(scope="module")
def real_tiny():
    from vlmrl.models.qwen3vl import Qwen3VL, Qwen3VLConfig

    # abstract parameters: only traced (make_jaxpr), never run
    return nnx.eval_shape(lambda: Qwen3VL(Qwen3VLConfig.tiny(), rngs=nnx.Rngs(1)))


@pytest.fixture(scope="module")
def plain(fake):
    return Sampler(fake, SamplingConfig(stop_ids=()), **fake_sampler_kwargs())


@pytest.fixture(scope="module")
def tapped(fake):
    """One compiled tapped sampler (batch 2, 16-token bucket) shared by the tests below."""
    return _tapped(fake, **fake_sampler_kwargs())


def _tapped(model, tap=ON, cfg=None, **kw):
    bus = Bus(capacity=10_000)
    sub = bus.subscribe("test")
    s = Sampler(model, cfg or SamplingConfig(stop_ids=()), tap=tap, bus=bus, detok=lambda i: f"<t{i}>", **kw)
    return s, sub


def test_off_traces_exactly_the_uninstrumented_program(real_tiny):
    from vlmrl.models.qwen3vl import KVCache
    from vlmrl.models.qwen3vl.model import text_position_ids

    prompts = _prompts()
    plain = Sampler(real_tiny).jaxpr(prompts=prompts, max_new_tokens=8)
    off = Sampler(real_tiny, tap=TapConfig(enabled=False)).jaxpr(prompts=prompts, max_new_tokens=8)
    on = Sampler(real_tiny, tap=ON, bus=Bus()).jaxpr(prompts=prompts, max_new_tokens=8)
    assert count_prim(plain) == 0 and "callback" not in str(plain) and str(off) == str(plain)
    assert count_prim(on) == 2  # one at prefill, one (gated) in the decode loop body
    # and the model's own entry points, prefill and decode, with the tap off
    ids = jnp.ones((2, 8), jnp.int32)
    mask = jnp.ones((2, 8), jnp.int32)
    pos = jnp.asarray(text_position_ids(np.ones((2, 8))))
    cache = KVCache.init(real_tiny.config, 2, 16)
    gd, st = nnx.split(real_tiny)
    for tap in (None, TapConfig(enabled=False)):
        for fn in (lambda m, c: m.forward(ids, mask, pos, cache=c, tap=tap),
                   lambda m, c: m.decode_step(ids[:, 0], c, tap=tap)):
            jp = jax.make_jaxpr(lambda st, c: fn(nnx.merge(gd, st), c))(st, cache)
            assert count_prim(jp) == 0 and "callback" not in str(jp)


def test_one_callback_per_emitted_step_and_a_new_stride_does_not_recompile(tapped):
    s, sub = tapped
    sub.drain()
    n = 16
    generations = []
    for stride in (1, 3, 7, 3):
        before = s.host.callbacks
        s.host.stride = stride  # what the adaptation would set between calls
        out = s.generate(prompts=_prompts(), max_new_tokens=n)
        emitted = [i for i in range(1, n) if i % stride == 0]
        assert s.host.callbacks - before == 1 + len(emitted), f"stride {stride}"
        events = [e for e in sub.drain() if e.kind == "decode"]
        generations.append({e.generation for e in events})
        steps = sorted({e.step for e in events})
        assert steps == [0] + emitted
        assert len(events) == 2 * len(steps)  # both rows alive at every emitted step
        for e in events:  # the event's token is the sampled token of that step and row
            assert e.token_id == out.tokens[e.seq_index, e.step] and e.token_text == f"<t{e.token_id}>"
    assert s._jit._cache_size() == 1
    assert s.host.errors == 0
    # every event names its generate() call: one id per call, counting up (step keys restart)
    assert all(len(g) == 1 for g in generations)
    ids = [g.pop() for g in generations]
    assert ids == list(range(ids[0], ids[0] + 4)) and ids[0] >= 1


def test_instrumentation_does_not_change_the_samples(plain, tapped):
    kw = dict(prompts=_prompts((5, 9), seed=3), max_new_tokens=12)
    off = plain.generate(**kw)
    s, _ = tapped
    s.host.stride = 1
    on = s.generate(**kw)
    np.testing.assert_array_equal(on.tokens, off.tokens)
    np.testing.assert_allclose(on.logprobs, off.logprobs, rtol=1e-6, atol=1e-6)


def test_decode_events_carry_probabilities_positions_stats_and_the_attention_row(fake, tapped):
    s, sub = tapped
    sub.drain()
    s.host.stride = 1
    prompts = _prompts((7, 12))
    out = s.generate(prompts=prompts, max_new_tokens=6)
    events = [e for e in sub.drain() if e.kind == "decode"]
    S = out.prompt_ids.shape[1]
    L, H = fake.config.text.num_hidden_layers, fake.config.text.num_attention_heads
    for e in events:
        r, i = e.seq_index, e.step
        assert e.phase == ("prefill" if i == 0 else "decode")
        assert e.logprob == pytest.approx(out.logprobs[r, i], abs=1e-5)
        assert e.token_prob == pytest.approx(np.exp(out.logprobs[r, i]), abs=1e-5)
        assert e.entropy == pytest.approx(out.entropy[r, i], abs=1e-4)
        assert e.top_k[0][0] == e.token_id and len(e.top_k) == ON.top_k  # greedy: the best token
        assert e.cache_len == S + i and e.cache_max == S + 16
        # the query of step i is the token at prompt position len + i - 1 (all axes equal for text)
        assert (e.mrope_t, e.mrope_h, e.mrope_w) == (len(prompts[r]) + i - 1,) * 3
        assert set(e.attn_stats) == set(ATTN_STATS) and e.attn_stats["focus"].shape == (L, H)
        assert np.array_equal(e.attention_pattern, e.attn_stats["focus"])
        assert e.kv_bytes == e.cache_len * 2 * L * 2 * 16 * 4 * 2  # layers*kv*hd*f32*(K,V)*batch
        if r == ON.watch_row:
            row = e.attention_row
            assert row.shape == (e.cache_len,) and row.sum() == pytest.approx(1.0, abs=2e-3)
            assert (row[:S - len(prompts[r])] == 0).all()  # left padding gets no attention
        else:
            assert e.attention_row is None


def test_top_k_alternatives_follow_the_temperature_the_token_was_drawn_with(tapped):
    s, sub = tapped
    sub.drain()
    s.host.stride = 1
    out = s.generate(prompts=_prompts(), max_new_tokens=10, temperature=3.0, key=jax.random.PRNGKey(5))
    checked = 0
    for e in (e for e in sub.drain() if e.kind == "decode"):
        probs = [q for _, _, q in e.top_k]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
        for tid, _, q in e.top_k:
            if tid == e.token_id:  # the drawn token's listed probability is its own
                assert q == pytest.approx(np.exp(out.logprobs[e.seq_index, e.step]), rel=1e-4)
                checked += 1
    assert checked > 0


class _BrokenBus:
    def publish(self, event):
        raise RuntimeError("consumer exploded")


def test_a_failing_callback_never_fails_generation_and_reports_once(plain, tapped):
    logs = []
    s, _ = tapped
    bus, log, errors = s.host.bus, s.host._log, s.host.errors
    s.host.bus, s.host._log, s.host.stride = _BrokenBus(), logs.append, 1
    try:
        out = s.generate(prompts=_prompts(), max_new_tokens=8)
    finally:
        s.host.bus, s.host._log = bus, log
    ref = plain.generate(prompts=_prompts(), max_new_tokens=8)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    assert s.host.errors - errors == 8 and len(logs) == (1 if errors == 0 else 0)
    assert not logs or "consumer exploded" in logs[0]


def test_stride_adapts_toward_the_target_emit_rate():
    host = TapHost(ON, bus=Bus(), target_rate=30.0, initial_stride=4)
    host.begin_call(CallContext())
    host._times = [k * 0.01 for k in range(20)]  # an emit every 10 ms at stride 4: 400 steps/s
    assert host.end_call(decode_steps=80, wall_s=5.0) == 13  # 400/30
    host.begin_call(CallContext())
    host._times = [k * 1.0 for k in range(5)]  # far too slow now: 13 steps/s
    assert host.end_call(decode_steps=60, wall_s=4.0) == 3  # at most 4x down per call
    host.begin_call(CallContext())
    host._times = []  # too few emits to time: fall back on the call's wall clock
    assert host.end_call(decode_steps=90, wall_s=1.0) == 3


def test_pool_matrix_sums_keys_averages_real_queries_and_pads_at_the_start():
    m = np.arange(7 * 7, dtype=np.float32).reshape(7, 7)
    pooled, f = pool_matrix(jnp.asarray(m), 3)
    assert f == pool_factor(7, 3) == 3 and pooled.shape == (3, 3)
    assert pool_layout(7, 3) == (3, 2)
    padded = np.pad(m, ((2, 0), (2, 0)))
    want = padded.reshape(3, 3, 3, 3).sum(axis=(1, 3)) / np.array([1, 3, 3], np.float32)[:, None]
    np.testing.assert_allclose(np.asarray(pooled), want, rtol=1e-6)
    host, _ = pool_matrix(m, 3)  # the host's numpy path is the same function
    np.testing.assert_allclose(host, np.asarray(pooled), rtol=1e-6)
    same, f1 = pool_matrix(jnp.asarray(m), 7)
    assert f1 == 1 and np.array_equal(np.asarray(same), m)


@pytest.mark.parametrize("n", [37, 40, 41, 63, 64])
def test_matrix_labels_line_up_with_pooled_rows_for_any_length(fake, n):
    """Each pooled row is labelled with the first token of the cells it covers, for prompt
    lengths that are and are not multiples of the factor; rows still sum to 1."""
    tap = TapConfig(enabled=True, matrix_layer=0, matrix_head=0, matrix_max=8)
    s, sub = _tapped(fake, tap=tap, **fake_sampler_kwargs())
    prompt = np.arange(1000, 1000 + n)
    s.generate(prompts=[prompt], max_new_tokens=2)
    m = next(e for e in sub.drain() if e.kind == "attention_matrix")
    S = 64  # the sampler's prompt bucket
    f, pad = pool_layout(S, 8)
    first_real = S - n  # left padding
    cells = [i for i in range(S // f + (pad > 0)) if (i + 1) * f - pad > first_real]
    want = [f"<t{prompt[max(i * f - pad, first_real) - first_real]}>" for i in cells]
    assert m.query_tokens == want and m.pool == f
    rows = m.matrix.astype(np.float32).sum(axis=1)
    np.testing.assert_allclose(rows, 1.0, atol=5e-3)


def test_prefill_attention_matrix_is_pooled_and_cropped_to_the_prompt(fake):
    tap = TapConfig(enabled=True, matrix_layer=-1, matrix_max=16)
    s, sub = _tapped(fake, tap=tap, **fake_sampler_kwargs())
    prompts = _prompts((40, 5))
    s.generate(prompts=prompts, max_new_tokens=2)
    mats = [e for e in sub.drain() if e.kind == "attention_matrix"]
    assert len(mats) == 1
    m = mats[0]
    assert m.pool == 4 and m.layer is None and m.head is None  # 64-slot bucket / 16
    assert m.matrix.shape == (10, 10) and m.matrix.dtype == np.float16  # 40 tokens in 10 cells of 4
    assert len(m.query_tokens) == len(m.token_types) == 10 and set(m.token_types) == {"text"}
    assert m.query_tokens[0] == f"<t{prompts[0][0]}>"
    # causal: each pooled row's mass sits on or left of its diagonal block
    assert np.allclose(np.triu(m.matrix.astype(np.float32), 1), 0, atol=1e-3)


def test_payload_is_one_buffer_bounded_by_max_rows_not_by_batch():
    from vlmrl.instrument.taps import decode_payload, pack_payload

    tap = TapConfig(enabled=True, max_rows=2)
    L, H, T, V = 3, 4, 301, 5000

    def nbytes(B, image_slots=0):
        aux = dict(attn_rows=(jnp.zeros((B, H, T)),) * L, key_valid=jnp.ones((B, T), bool),
                   key_vision=jnp.zeros((B, T), bool))
        z = jnp.zeros((B,))
        out = jax.eval_shape(lambda: pack_payload(decode_payload(
            tap, aux, jnp.zeros((B, V)), 1.0, z.astype(jnp.int32), z, z, z.astype(bool), 3, 10,
            (image_slots, jnp.zeros(image_slots + 3, jnp.int32)) if image_slots else None)))
        assert out.ndim == 1 and out.dtype == jnp.float32
        return out.shape[0] * 4

    # header + ints + floats for 2 rows, plus the float16 row two slots per word
    want = 4 * (10 + 2 * (2 + 5) + 2 * (2 + 5) + L * 2 * H * 4 + (T + 1) // 2)
    assert nbytes(2) == nbytes(64) == want
    # the image view adds its share per layer (float32) and [L, slots] float16, whatever the batch
    assert nbytes(2, 7) == nbytes(64, 7) == want + 4 * (L + (L * 7 + 1) // 2)


@pytest.mark.parametrize("with_stats, T, n_img", [(True, 7, 0), (False, 8, 0), (True, 0, 0), (True, 7, 5), (False, 0, 6)])
def test_pack_unpack_round_trip(with_stats, T, n_img):
    from vlmrl.instrument.taps import pack_payload, top_k_exact, unpack_payload

    rng = np.random.default_rng(T)
    R, k, L, H = 3, 4, 2, 5
    logits = jnp.asarray(rng.standard_normal((R, 9000)), jnp.float32)
    vals, ids = top_k_exact(logits, k)
    ref_v, ref_i = jax.lax.top_k(logits, k)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(ref_i))
    p = dict(step=jnp.int32(17), cache_len=jnp.int32(99), token=jnp.asarray([5, 151645, 0], jnp.int32),
             alive=jnp.asarray([True, False, True]), top_ids=ids, top_p=jnp.exp(vals),
             logprob=jnp.asarray([-0.5, -1e-8, -30.0]), entropy=jnp.asarray([0.1, 2.0, 11.9]))
    if with_stats:
        p["stats"] = jnp.asarray(rng.random((L, R, H, 4)), jnp.float32)
    if T:
        p["attn_row"] = jnp.asarray(rng.random(T), jnp.float16)
    if n_img:  # the image view's part: [L, slots] float16 (odd sizes pad a half word) and [L] float32
        p["img_attn"] = jnp.asarray(rng.random((L + 1, n_img)), jnp.float16)
        p["img_share"] = jnp.asarray(rng.random(L + 1), jnp.float32)
    back = unpack_payload(np.asarray(jax.jit(pack_payload)(p)))
    assert set(back) == set(p)
    for name, arr in p.items():
        np.testing.assert_array_equal(back[name], np.asarray(arr), err_msg=name)


def test_documented_debug_callback_path_still_works_without_the_fast_primitive(fake, monkeypatch):
    """Where JAX internals differ, the taps fall back on jax.debug.callback: same events."""
    from vlmrl.instrument import tap_callback

    monkeypatch.setattr(tap_callback, "tap_callback_p", None)
    s, sub = _tapped(fake, **fake_sampler_kwargs())
    s.host.stride = 2
    kw = dict(prompts=_prompts((6,)), max_new_tokens=5)
    assert count_prim(s.jaxpr(**kw), ("debug_callback",)) == 2
    out = s.generate(**kw)
    events = sorted((e for e in sub.drain() if e.kind == "decode"), key=lambda e: e.step)  # unordered callbacks
    assert [e.step for e in events] == [0, 2, 4] and s.host.errors == 0
    assert [e.token_id for e in events] == [int(out.tokens[0, i]) for i in (0, 2, 4)]


def test_the_fast_callback_passed_its_import_probe_on_this_jax():
    from vlmrl.instrument import tap_callback

    assert tap_callback.FALLBACK_REASON is None and tap_callback.tap_callback_p is not None
    assert tap_callback.probe(tap_callback.tap_callback_p) is None


def _primitive(name, lowering):
    from jax._src import debugging as dbg
    from jax._src.interpreters import mlir
    from jax.extend import core as jcore

    prim = jcore.Primitive(name)
    prim.multiple_results = True
    prim.def_impl(lambda *a, callback: [])
    prim.def_effectful_abstract_eval(lambda *avals, callback: ([], {dbg.debug_effect}))
    mlir.register_lowering(prim, lowering)
    return prim


def test_a_primitive_that_fails_to_lower_or_never_calls_back_fails_the_probe():
    """Not only an import error: any failure to lower or run the probe is caught."""
    from vlmrl.instrument import tap_callback

    def raises(ctx, *args, callback):
        raise NotImplementedError("internals moved")

    why = tap_callback.probe(_primitive("tap_probe_raises", raises))
    assert why.startswith("probe failed: NotImplementedError: internals moved")
    why = tap_callback.probe(_primitive("tap_probe_silent", lambda ctx, *args, callback: []))
    assert why.startswith("probe delivered 0 call(s)")


def test_selection_falls_back_to_debug_callback_on_a_failed_probe_or_on_request(monkeypatch):
    from vlmrl.instrument import tap_callback

    monkeypatch.setattr(tap_callback, "probe", lambda prim: "probe failed: simulated")
    assert tap_callback._select() == (None, "probe failed: simulated")
    monkeypatch.undo()
    monkeypatch.setenv("VLMRL_TAP_CALLBACK", "debug")
    assert tap_callback._select() == (None, "VLMRL_TAP_CALLBACK=debug")
    monkeypatch.delenv("VLMRL_TAP_CALLBACK")
    prim, why = tap_callback._select()
    assert prim is not None and why is None


def test_real_model_matrix_rows_match_labels_and_stay_causal():
    """The real model hands over raw probs; the one pooling lines rows up with the labels."""
    from vlmrl.models.qwen3vl import Qwen3VL, Qwen3VLConfig

    model = Qwen3VL(Qwen3VLConfig.tiny(vocab_size=2000), rngs=nnx.Rngs(0))
    tap = TapConfig(enabled=True, matrix_layer=-1, matrix_max=8)
    s, sub = _tapped(model, tap=tap, cfg=SamplingConfig(stop_ids=(), pad_id=0, prompt_buckets=(50,)))
    prompt = np.arange(1000, 1037)  # 37 tokens from slot 13 of a 50-slot bucket: factor 7, 6 pad cells
    s.generate(prompts=[prompt], max_new_tokens=2)
    m = next(e for e in sub.drain() if e.kind == "attention_matrix")
    mat = m.matrix.astype(np.float32)
    assert m.pool == 7 and mat.shape == (len(m.query_tokens),) * 2 == (6, 6)
    # cells cover slots [8, 15), [15, 22), ...: the second starts at the prompt's third token
    assert m.query_tokens[:3] == ["<t1000>", "<t1002>", "<t1009>"]
    np.testing.assert_allclose(mat.sum(axis=1), 1.0, atol=5e-3)
    assert np.allclose(np.triu(mat, 1), 0, atol=1e-3)


def test_matrix_side_is_capped_so_its_log_line_fits_the_readers():
    import json
    from vlmrl.instrument.events import AttentionMatrix, decode_event
    from vlmrl.instrument.record import encode_line
    from vlmrl.instrument.log_read import LINE_MAX
    from vlmrl.instrument.taps import MATRIX_MAX_LIMIT

    with pytest.raises(ValueError, match="log line"):
        TapConfig(enabled=True, matrix_layer=0, matrix_max=MATRIX_MAX_LIMIT + 1)
    n = MATRIX_MAX_LIMIT
    texts = ["<|image_pad|>"] * n
    ev = AttentionMatrix(layer=0, head=None, query_tokens=texts, key_tokens=list(texts), token_types=["vision"] * n,
                         matrix=np.random.default_rng(0).random((n, n), dtype=np.float32), pool=1, step=0)
    line = encode_line(ev)
    assert len(line) < LINE_MAX
    back = decode_event(json.loads(line))  # the readers' own bounds accept it too
    assert back.matrix.shape == (n, n)
