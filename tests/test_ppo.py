"""PPO math on hand-computed values, and the jitted update on a toy policy."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlmrl.core import ppo


def test_group_advantages_by_hand():
    adv = np.asarray(ppo.group_advantages([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], group=4, eps=0.0))
    std = math.sqrt(0.25 * 0.75)  # rewards {1,0,0,0}: mean .25, population std .433
    assert np.allclose(adv[:4], [0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std], atol=1e-6)
    assert np.allclose(adv[4:], 0.0)  # a group that all agree carries no signal
    with pytest.raises(ValueError, match="groups of 3"):
        ppo.group_advantages([1.0, 0.0, 1.0, 0.0], group=3)


def test_clipped_surrogate_by_hand():
    cfg = ppo.PPOConfig(clip_eps=0.2)
    old = jnp.zeros((4, 1))
    logp = jnp.log(jnp.asarray([[1.5], [0.5], [1.1], [1.5]]))  # ratios 1.5, 0.5, 1.1, 1.5
    adv = jnp.asarray([1.0, 1.0, -2.0, -2.0])
    pg, kl, clipped, ratio = ppo.token_terms(logp, old, logp, adv, cfg)
    # A>0: min(1.5, 1.2) = 1.2 ; min(0.5, 0.8) = 0.5 ; A<0: min(-2.2, -2.2) ; min(-3.0, -2.4) = -3.0
    assert np.allclose(np.asarray(pg)[:, 0], [-1.2, -0.5, 2.2, 3.0], atol=1e-6)
    assert np.allclose(np.asarray(clipped)[:, 0], [1, 1, 0, 1])
    assert np.allclose(np.asarray(kl), 0.0)  # same as the reference
    assert np.allclose(np.asarray(ratio)[:, 0], [1.5, 0.5, 1.1, 1.5], atol=1e-6)


def test_k3_kl_by_hand():
    cfg = ppo.PPOConfig()
    logp = jnp.asarray([[math.log(0.5)]])
    ref = jnp.asarray([[math.log(0.25)]])
    _, kl, _, _ = ppo.token_terms(logp, logp, ref, jnp.zeros(1), cfg)
    # k3 = r - log r - 1 with r = p_ref / p = 0.5
    assert np.isclose(float(kl[0, 0]), 0.5 - math.log(0.5) - 1.0, atol=1e-6)


def test_policy_loss_is_a_token_mean_over_the_mask():
    cfg = ppo.PPOConfig(kl_coef=0.5, ent_coef=0.1)
    logp = jnp.zeros((2, 3))
    mask = jnp.asarray([[1, 1, 0], [1, 0, 0]], bool)
    adv = jnp.asarray([1.0, -1.0])
    entropy = jnp.asarray([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    loss, m = ppo.policy_loss(logp, entropy, logp, logp, adv, mask, cfg)
    # pg per valid token: -1, -1, +1 -> mean -1/3 ; entropy mean 2 ; kl 0
    assert np.isclose(float(m["loss/pg"]), -1 / 3, atol=1e-6)
    assert np.isclose(float(m["policy/entropy"]), 2.0, atol=1e-6)
    assert np.isclose(float(loss), -1 / 3 - 0.1 * 2.0, atol=1e-6)


def test_token_credit_is_gradient_times_logp():
    cfg = ppo.PPOConfig(kl_coef=0.0)
    logp = jnp.log(jnp.asarray([[0.5, 0.25]]))
    mask = jnp.ones((1, 2), bool)
    credit = np.asarray(ppo.token_credit(logp, logp, logp, jnp.asarray([2.0]), mask, cfg))
    # at ratio 1 (unclipped) d loss / d logp_t = -A * ratio / n_tokens = -1, so credit_t = -logp_t
    assert np.allclose(credit, [[-math.log(0.5), -math.log(0.25)]], atol=1e-6)
    assert np.allclose(np.asarray(ppo.token_credit(logp, logp, logp, jnp.asarray([2.0]), mask * False, cfg)), 0.0)


def _toy():
    """A bandit policy: logits = W[context]; 'completions' are one token."""
    V, C = 5, 3

    def apply_fn(params, b):
        logits = params["w"][b["ids"][:, 0]]  # [R, V] from the context token
        return jnp.stack([logits, logits], axis=1)  # slots S-1 and S (the last is unused)

    return V, C, apply_fn


def test_update_moves_probability_to_the_rewarded_token():
    V, C, apply_fn = _toy()
    cfg = ppo.PPOConfig(lr=0.1, kl_coef=0.0, minibatches=2, epochs=2)
    opt = cfg.optimizer()
    params = {"w": jnp.zeros((C, V))}
    state = opt.init(params)
    ctx = np.repeat(np.arange(4) % C, 4)  # 4 prompts x group 4
    tok = np.tile(np.arange(4), 4)
    ids = np.stack([ctx, tok], axis=1).astype(np.int32)
    rewards = (tok == ctx).astype(np.float32)  # the right answer is the context's own id
    batch = {"ids": jnp.asarray(ids), "completion_mask": jnp.ones((16, 1), bool),
             "position_ids": jnp.zeros((3, 16, 2), jnp.int32)}
    score = ppo.make_scorer(apply_fn, prompt_len=1)
    old, _ = score(params, batch)
    batch.update(old_logp=old, ref_logp=old, adv=ppo.group_advantages(rewards, 4))
    update = ppo.make_update(apply_fn, cfg, opt, prompt_len=1)
    before = np.asarray(old)[rewards == 1].mean()
    params, state, metrics = update(params, state, batch, jax.random.PRNGKey(0), jnp.int32(0))
    after, _ = score(params, batch)
    assert np.asarray(after)[rewards == 1].mean() > before + 0.1
    assert set(metrics) >= {"loss/total", "loss/pg", "policy/kl_ref", "policy/entropy", "policy/clip_frac",
                            "optim/grad_norm", "optim/lr"}
    assert np.isclose(float(metrics["optim/lr"]), 0.1)


def test_warmup_schedule_reports_the_lr_used():
    cfg = ppo.PPOConfig(lr=1.0, warmup_steps=4)
    assert [float(cfg.schedule()(i)) for i in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]


def test_cosine_decay_reaches_the_final_fraction_and_stays():
    cfg = ppo.PPOConfig(lr=1.0, warmup_steps=10, total_steps=110, final_lr_frac=0.1)
    lrs = [float(cfg.schedule()(i)) for i in (0, 5, 10, 60, 110, 500)]
    assert np.allclose(lrs, [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], atol=1e-6)
    assert float(ppo.PPOConfig(lr=1.0, total_steps=110, final_lr_frac=1.0).schedule()(100)) == 1.0


def test_scanned_update_equals_a_plain_loop_over_minibatches():
    V, C, apply_fn = _toy()
    cfg = ppo.PPOConfig(lr=0.05, kl_coef=0.1, ent_coef=0.01, minibatches=2, epochs=2)
    opt = cfg.optimizer()
    rng = np.random.default_rng(0)
    ids = np.stack([rng.integers(0, C, 8), rng.integers(0, V, 8)], axis=1).astype(np.int32)
    w0 = jnp.asarray(rng.normal(size=(C, V)), jnp.float32)
    batch = {"ids": jnp.asarray(ids), "completion_mask": jnp.ones((8, 1), bool),
             "position_ids": jnp.asarray(rng.integers(0, 9, (3, 8, 2)), jnp.int32),
             "adv": ppo.group_advantages(rng.random(8), 4)}
    old, _ = ppo.make_scorer(apply_fn, 1)({"w": w0}, batch)
    batch.update(old_logp=old, ref_logp=old - 0.1)
    key = jax.random.PRNGKey(3)
    w_copy = jnp.array(w0)  # the update donates its params and optimizer state
    fast, _, _ = ppo.make_update(apply_fn, cfg, opt, 1)({"w": w_copy}, opt.init({"w": w_copy}), dict(batch), key,
                                                        jnp.int32(0))
    # the same algorithm written as a plain Python loop
    params, state = {"w": w0}, opt.init({"w": w0})
    for k in jax.random.split(key, cfg.epochs):
        for idx in np.asarray(jax.random.permutation(k, 8)).reshape(cfg.minibatches, -1):
            mb = {n: (v[:, idx] if n == "position_ids" else v[idx]) for n, v in batch.items()}

            def loss(p):
                logp, ent = ppo.completion_logp(apply_fn, p, mb, 1)
                return ppo.policy_loss(logp, ent, mb["old_logp"], mb["ref_logp"], mb["adv"], mb["completion_mask"],
                                       cfg)[0]

            updates, state = opt.update(jax.grad(loss)(params), state, params)
            params = optax.apply_updates(params, updates)
    assert np.allclose(np.asarray(fast["w"]), np.asarray(params["w"]), atol=1e-5)
    assert not np.allclose(np.asarray(params["w"]), np.asarray(w0))
