"""Update taps: the statistics one PPO update reports equal a direct numpy computation from
the parameters before and after the update and the gradient; off traces exactly the
uninstrumented update; on emits exactly one host callback per update, after the scan."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import count_prim
from vlmrl.core import ppo, rollout
from vlmrl.core.update_stats import UpdateLayout, UpdateTap, path_name
from vlmrl.instrument.bus import Bus
from vlmrl.instrument.events import UPDATE_OTHER_ROWS, UpdateStats
from vlmrl.instrument.tap_host import UpdateTapHost

# fp32 throughout. The direct gradient is taken over the rows in their given order, the
# update's over a shuffled minibatch: sums in another order, so ~1e-6 relative apart.
RTOL, ATOL = 2e-5, 1e-9


@pytest.fixture(scope="module")
def setup():
    """A real tiny policy, one real rollout (images included) and the update's inputs."""
    from vlmrl.core.sampling import Sampler
    from vlmrl.envs.shapes import make_env

    env = make_env("colors")
    model, config, codec = rollout.build_policy("tiny", env, seed=0)
    sampler = Sampler(model, rollout.sampling_config(codec))
    ro = rollout.collect(sampler, env, codec, config, seed=0, step=0, batch=2, group=2,
                         max_new_tokens=4, temperature=1.0, key=jax.random.PRNGKey(1))
    graphdef, params = nnx.split(model)
    R = ro.ids.shape[0]

    apply_fn = rollout.logits_fn(graphdef)

    batch = rollout.to_device({"ids": ro.ids, "attn_mask": ro.attn_mask, "position_ids": ro.position_ids,
                               "pixel_values": ro.pixel_values, "completion_mask": ro.completion_mask})
    old = jnp.asarray(ro.sample_logp)
    rng = np.random.default_rng(0)
    batch.update(old_logp=old, ref_logp=old + 0.05 * jnp.asarray(rng.standard_normal(old.shape), jnp.float32),
                 adv=jnp.asarray([1.0, -1.0, 0.5, -0.5], jnp.float32))
    return dict(apply_fn=apply_fn, params=params, batch=batch, ro=ro, config=config, R=R)


def _update(s, cfg, stats=None, rows=None):
    vin = rollout.vision_inputs(s["ro"].grid, rows or s["R"] // cfg.minibatches, s["config"].vision)
    return ppo.make_update(s["apply_fn"], cfg, cfg.optimizer(), s["ro"].prompt_len, vin, stats=stats)


def _tapped(s, cfg):
    bus = Bus(capacity=100)
    sub = bus.subscribe("test")
    layout = UpdateLayout.build(s["params"], s["config"].text, s["config"].vision.depth)
    host = UpdateTapHost(bus, layout.num_layers, layout.num_heads, layout.vision_depth, layout.mergers)
    return _update(s, cfg, UpdateTap(layout, host.on_update)), host, sub


def _flat(tree) -> dict:
    return {path_name(p): np.asarray(v, np.float64) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _direct_rows(flat: dict, tc, depth: int, mergers: int) -> dict:
    """Squared sums per row, sliced by hand from the named arrays (no layout code)."""
    L, H, KV, hd = tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
    sq = {k: float(np.sum(v * v)) for k, v in flat.items()}
    head = np.zeros((L, H))
    for li in range(L):
        a = f"model/language_model/layers/{li}/self_attn/"
        for h in range(H):
            g = h // (H // KV)
            head[li, h] = (np.sum(flat[a + "q_proj/kernel"][:, h * hd:(h + 1) * hd] ** 2)
                           + np.sum(flat[a + "k_proj/kernel"][:, g * hd:(g + 1) * hd] ** 2)
                           + np.sum(flat[a + "v_proj/kernel"][:, g * hd:(g + 1) * hd] ** 2)
                           + np.sum(flat[a + "o_proj/kernel"][h * hd:(h + 1) * hd, :] ** 2))

    def under(prefix):
        return sum(v for k, v in sq.items() if k.startswith(prefix))

    lay = "model/language_model/layers/"
    vis = "model/visual/"
    other = {"embed": under("model/language_model/embed_tokens") + under("lm_head"),
             "vision in": under(vis + "patch_embed/") + under(vis + "pos_embed/"),
             "rest": under("model/language_model/norm/")}
    return dict(head=head, mlp=np.array([under(f"{lay}{i}/mlp/") for i in range(L)]),
                layer=np.array([under(f"{lay}{i}/") for i in range(L)]),
                vision=np.array([under(f"{vis}blocks/{i}/") for i in range(depth)]),
                merger=np.array([under(vis + "merger/")] + [under(f"{vis}deepstack_merger_list/{j}/")
                                                             for j in range(mergers - 1)]),
                other=np.array([other[n] for n in UPDATE_OTHER_ROWS]), total=sum(sq.values()))


ONE_STEP = ppo.PPOConfig(lr=3e-3, epochs=1, minibatches=1, max_grad_norm=0.5, kl_coef=0.1, ent_coef=0.01)


@pytest.fixture(scope="module")
def one_step(setup):
    """One compiled tapped update of one optimizer step, shared (compiling it is most of a test)."""
    return _tapped(setup, ONE_STEP)


@pytest.mark.slow
def test_tapped_statistics_equal_a_direct_computation_from_weights_and_gradient(setup, one_step):
    s, cfg = setup, ONE_STEP
    before = jax.tree_util.tree_map(jnp.copy, s["params"])
    update, host, sub = one_step
    sub.drain()
    calls = host.callbacks
    after, _, metrics = update(jax.tree_util.tree_map(jnp.copy, before), cfg.optimizer().init(before),
                               s["batch"], jax.random.PRNGKey(0), jnp.int32(7))
    events = [e for e in sub.drain() if isinstance(e, UpdateStats)]
    assert host.callbacks - calls == 1 and host.errors == 0 and len(events) == 1
    ev = events[0]
    assert ev.step == 7 and ev.optimizer_steps == 1

    # the gradient, directly: the same loss over the whole rollout as one minibatch
    vin = rollout.vision_inputs(s["ro"].grid, s["R"], s["config"].vision)

    def loss(p):
        b = s["batch"]
        logp, ent = ppo.completion_logp(s["apply_fn"], p, {**b, "vinputs": vin}, s["ro"].prompt_len)
        return ppo.policy_loss(logp, ent, b["old_logp"], b["ref_logp"], b["adv"], b["completion_mask"], cfg)[0]

    grads = jax.grad(loss)(before)
    fb, fa, fg = _flat(before), _flat(after), _flat(grads)
    tc, depth, mergers = s["config"].text, s["config"].vision.depth, len(ev.merger_ratio)
    assert mergers == 1 + len(s["config"].vision.deepstack_visual_indexes)
    g = _direct_rows(fg, tc, depth, mergers)
    d = _direct_rows({k: fa[k] - fb[k] for k in fb}, tc, depth, mergers)
    w = _direct_rows(fb, tc, depth, mergers)
    for row in ("head", "mlp", "layer", "vision", "merger", "other"):
        np.testing.assert_allclose(getattr(ev, f"{row}_grad"), np.sqrt(g[row]), rtol=RTOL, atol=ATOL, err_msg=row)
        np.testing.assert_allclose(getattr(ev, f"{row}_ratio"), np.sqrt(d[row] / w[row]), rtol=RTOL, err_msg=row)
        moved = getattr(ev, f"{row}_ratio") > 0
        if row == "merger":
            # the tiny model's last DeepStack merger is added after its last layer, at image
            # positions only: no completion token sees it, so its gradient and update are 0
            assert moved.tolist() == [True, True, False] and ev.merger_grad[-1] == 0
        else:
            assert moved.all(), row  # every other part moved (the images included)
    gn = np.sqrt(g["total"])
    assert ev.grad_norm == pytest.approx(gn, rel=RTOL) and ev.grad_norm_max == pytest.approx(gn, rel=RTOL)
    assert ev.grad_norm == pytest.approx(float(metrics["optim/grad_norm"]), rel=1e-6)
    assert ev.clip_factor == pytest.approx(min(1.0, 0.5 / gn), rel=RTOL)
    assert ev.head_ratio.shape == (tc.num_hidden_layers, tc.num_attention_heads)


@pytest.mark.slow
def test_several_steps_average_over_the_scan_and_key_the_event_by_update(setup):
    s = setup
    cfg = ppo.PPOConfig(lr=3e-3, epochs=2, minibatches=2)
    update, host, sub = _tapped(s, cfg)
    plain = _update(s, cfg)
    p0 = s["params"]
    out_t = update(jax.tree_util.tree_map(jnp.copy, p0), cfg.optimizer().init(p0), s["batch"],
                   jax.random.PRNGKey(3), jnp.int32(4 * 5))
    out_p = plain(jax.tree_util.tree_map(jnp.copy, p0), cfg.optimizer().init(p0), s["batch"],
                  jax.random.PRNGKey(3), jnp.int32(4 * 5))
    # the taps change nothing the update computes
    for a, b in zip(jax.tree_util.tree_leaves(out_t[0]), jax.tree_util.tree_leaves(out_p[0])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    (ev,) = [e for e in sub.drain() if isinstance(e, UpdateStats)]
    assert host.callbacks == 1 and ev.step == 5 and ev.optimizer_steps == 4
    # metrics average the per-step grad norm over the scan, as the taps do
    assert ev.grad_norm == pytest.approx(float(out_t[2]["optim/grad_norm"]), rel=1e-5)
    assert ev.grad_norm_max >= ev.grad_norm > 0 and 0 < ev.clip_factor <= 1


def test_off_traces_exactly_the_uninstrumented_update_and_on_emits_one_callback_per_update(setup):
    s = setup
    cfg = ppo.PPOConfig(epochs=2, minibatches=2)
    args = (s["params"], cfg.optimizer().init(s["params"]), s["batch"], jax.random.PRNGKey(0), jnp.int32(0))
    plain = jax.make_jaxpr(_update(s, cfg))(*args)
    off = jax.make_jaxpr(_update(s, cfg, stats=None))(*args)
    assert count_prim(plain) == 0 and "callback" not in str(plain) and str(off) == str(plain)
    tapped = _tapped(s, cfg)[0]
    # on: the update reduces the statistics (no callback inside it, none per minibatch) and
    # hands them to one program whose only effect is the one host callback
    update = jax.make_jaxpr(tapped.jitted)(*args)
    assert count_prim(update) == 0
    payload = jax.eval_shape(tapped.jitted, *args)[3]
    assert payload.ndim == 1 and payload.dtype == jnp.float32
    assert count_prim(jax.make_jaxpr(tapped.emit)(payload)) == 1


@pytest.mark.slow
def test_payload_bytes_at_the_2b_shape():
    """The one buffer per update at Qwen3-VL-2B's shape: 28 layers x 16 heads, 24 vision
    blocks, 4 mergers: (535 rows x 3 squared sums + 6 words) x 4 bytes."""
    from vlmrl.core.update_stats import row_squares
    from vlmrl.instrument.taps import pack_update
    from vlmrl.models.qwen3vl import Qwen3VL, Qwen3VLConfig

    cfg = Qwen3VLConfig.preset("2b")
    abstract = nnx.eval_shape(lambda: Qwen3VL(cfg, rngs=nnx.Rngs(0)))
    _, params = nnx.split(abstract)
    layout = UpdateLayout.build(params, cfg.text, cfg.vision.depth)
    assert layout.sizes == {"heads": 448, "mlp": 28, "layer": 28, "vision": 24, "merger": 4, "other": 3}
    out = jax.eval_shape(lambda p: pack_update(jnp.int32(0), 4, jnp.zeros(3),
                                               jnp.stack([row_squares(layout, p)] * 3)), params)
    assert out.shape[0] * 4 == (3 * 535 + 6) * 4 == 6444


@pytest.mark.slow
def test_a_failing_publish_never_fails_the_update_and_is_reported_once(setup, one_step):
    s = setup
    update, host, _ = one_step

    class Broken:
        def publish(self, event):
            raise RuntimeError("consumer exploded")

    logs = []
    bus, log, errors = host.bus, host._log, host.errors
    host.bus, host._log = Broken(), logs.append
    p = s["params"]
    try:
        for i in range(2):
            out = update(jax.tree_util.tree_map(jnp.copy, p), ONE_STEP.optimizer().init(p), s["batch"],
                         jax.random.PRNGKey(i), jnp.int32(i))
            assert np.isfinite(float(out[2]["loss/total"]))
    finally:
        host.bus, host._log = bus, log
    assert host.errors - errors == 2 and len(logs) == (1 if errors == 0 else 0)
    assert not logs or "consumer exploded" in logs[0]


def test_unpack_rejects_a_payload_that_does_not_match_the_layout():
    from vlmrl.instrument.tap_host import unpack_update

    sizes = {"heads": 4, "mlp": 2, "layer": 2, "vision": 1, "merger": 1, "other": 3}
    head = np.array([3, 1, 13], np.int32).view(np.float32)
    good = np.concatenate([head, np.zeros(3 + 3 * 13, np.float32)])
    assert unpack_update(good, sizes)["count"] == 3
    with pytest.raises(ValueError, match="expected 13 rows"):
        unpack_update(good[:-1], sizes)
    with pytest.raises(ValueError):
        unpack_update(good, {**sizes, "heads": 8})
