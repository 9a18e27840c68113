"""Token-level PPO with group-relative advantages, for Qwen3-VL policies.

Read top to bottom: config -> advantages -> log-probs of completions -> the loss ->
the jitted update (epochs x minibatches in one `lax.scan`, optionally with the update
taps: per-row statistics of what it changed, one host callback per update) -> per-token
credit.
The update returns one flat dict of namespaced metrics (`loss/...`, `policy/...`,
`optim/...`) that the trainer logs and turns into a TrainingState in one call.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from vlmrl.core.mesh import batch_tree_shardings, constrain
from vlmrl.core.update_stats import row_squares
from vlmrl.instrument import tap_callback
from vlmrl.instrument.taps import pack_update


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    lr: float = 7e-4  # AdamW peak learning rate (after warmup)
    warmup_steps: int = 0  # linear warmup of the learning rate, in optimizer steps
    # cosine decay from lr to lr * final_lr_frac at optimizer step total_steps (0: no decay).
    # Adam's steps stay about lr in size once the policy is confident and gradients are
    # noise, and a constant lr let the tiny colour run fall from 0.98 to 0.12 reward.
    total_steps: int = 0
    final_lr_frac: float = 1.0
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # global-norm gradient clipping
    clip_eps: float = 0.2  # PPO ratio clipping: ratio kept in [1 - eps, 1 + eps]
    kl_coef: float = 0.01  # weight of the k3 KL estimate to the frozen reference policy
    ent_coef: float = 0.0  # weight of the entropy bonus
    epochs: int = 1  # passes over each rollout
    minibatches: int = 2  # minibatches per pass (rows of a group may land in different ones)
    adv_eps: float = 1e-4  # added to the group reward std before dividing

    def optimizer(self) -> optax.GradientTransformation:
        return optax.chain(optax.clip_by_global_norm(self.max_grad_norm),
                           optax.adamw(self.schedule(), weight_decay=self.weight_decay))

    def schedule(self) -> Callable:
        warmup = max(0, self.warmup_steps)
        if self.total_steps <= warmup or self.final_lr_frac == 1.0:
            if warmup == 0:
                return optax.constant_schedule(self.lr)
            return optax.linear_schedule(0.0, self.lr, warmup)
        return optax.warmup_cosine_decay_schedule(0.0, self.lr, warmup, self.total_steps,
                                                  end_value=self.lr * self.final_lr_frac)


# ---- advantages ---------------------------------------------------------------------------------

def group_advantages(rewards, group: int, eps: float = 1e-4):
    """(r - mean of its group) / (std of its group + eps); rows of one prompt are adjacent.

    A group whose samples all got the same reward carries no signal: its advantages are 0.
    """
    r = jnp.asarray(rewards, jnp.float32)
    if r.shape[0] % group:
        raise ValueError(f"{r.shape[0]} rewards do not split into groups of {group}")
    g = r.reshape(-1, group)
    std = g.std(axis=1, keepdims=True)
    adv = jnp.where(std > 0, (g - g.mean(axis=1, keepdims=True)) / (std + eps), 0.0)
    return adv.reshape(-1)


# ---- log-probabilities of the completion tokens --------------------------------------------------

def completion_logp(apply_fn, params, batch, prompt_len: int):
    """Per-token log-prob and entropy of each completion token under `params`.

    The logits at slot S-1+j predict completion token j (slot S+j). Returns float32
    (logp [R, N], entropy [R, N]).
    """
    logits = apply_fn(params, batch)  # [R, S + N, V]
    N = batch["ids"].shape[1] - prompt_len
    logits = logits[:, prompt_len - 1:prompt_len - 1 + N].astype(jnp.float32)
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    targets = batch["ids"][:, prompt_len:]
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy


# ---- the loss -----------------------------------------------------------------------------------

def token_terms(logp, old_logp, ref_logp, adv, cfg: PPOConfig):
    """Per-token clipped surrogate (to minimise), k3 KL to the reference, and clip indicator."""
    ratio = jnp.exp(logp - old_logp)
    a = adv[:, None]
    surrogate = jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps) * a)
    d = ref_logp - logp
    kl = jnp.exp(d) - d - 1.0  # k3: unbiased, always >= 0 (Schulman's estimator)
    clipped = (jnp.abs(ratio - 1.0) > cfg.clip_eps).astype(jnp.float32)
    return -surrogate, kl, clipped, ratio


def masked_mean(x, mask):
    m = mask.astype(jnp.float32)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def policy_loss(logp, entropy, old_logp, ref_logp, adv, mask, cfg: PPOConfig):
    """Token-level mean over all completion tokens of the minibatch (long answers weigh more)."""
    pg, kl, clipped, ratio = token_terms(logp, old_logp, ref_logp, adv, cfg)
    pg_loss, kl_mean, ent = masked_mean(pg, mask), masked_mean(kl, mask), masked_mean(entropy, mask)
    loss = pg_loss + cfg.kl_coef * kl_mean - cfg.ent_coef * ent
    metrics = {"loss/total": loss, "loss/pg": pg_loss, "policy/kl_ref": kl_mean, "policy/entropy": ent,
               "policy/clip_frac": masked_mean(clipped, mask), "policy/ratio": masked_mean(ratio, mask),
               "policy/approx_kl_old": masked_mean(old_logp - logp, mask)}
    return loss, metrics


# ---- the update ---------------------------------------------------------------------------------

def make_update(apply_fn, cfg: PPOConfig, optimizer: optax.GradientTransformation, prompt_len: int,
                vinputs_mb=None, stats=None, layout=None):
    """One jitted PPO update: `update(params, opt_state, batch, key, count) -> (params, opt_state, metrics)`.

    `batch` holds R rows (ids, attn_mask, position_ids [3, R, L], pixel_values [R, P, D],
    completion_mask, old_logp, ref_logp, adv); each of `cfg.epochs` passes shuffles the
    rows into `cfg.minibatches` equal minibatches. `vinputs_mb` are the vision index
    arrays for one minibatch's images (one grid for all). `count` is the number of
    optimizer steps taken before (it feeds the reported learning rate and the update taps).
    `stats`: an `update_stats.UpdateTap`, or None for exactly the uninstrumented program;
    with it the update also reduces per-row statistics and they reach `stats.callback` in
    one host callback per update.
    `layout`: (mesh, parameter shardings, optimizer-state shardings) of a sharded run, or
    None; with it each minibatch's rows stay on the mesh's data axis and the parameters and
    optimizer state keep their shardings through every step.
    """
    schedule = cfg.schedule()
    mesh, param_sh, opt_sh = layout if layout is not None else (None, None, None)
    n_steps = cfg.epochs * cfg.minibatches

    def minibatch_loss(params, mb):
        logp, entropy = completion_logp(apply_fn, params, {**mb, "vinputs": vinputs_mb}, prompt_len)
        return policy_loss(logp, entropy, mb["old_logp"], mb["ref_logp"], mb["adv"], mb["completion_mask"], cfg)

    grad_fn = jax.value_and_grad(minibatch_loss, has_aux=True)

    def step(carry, mb):
        params, opt_state, count = carry[:3]
        (_, metrics), grads = grad_fn(params, mb)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        new_params = constrain(optax.apply_updates(params, updates), param_sh)
        opt_state = constrain(opt_state, opt_sh)
        metrics = {**metrics, "optim/grad_norm": optax.tree.norm(grads), "optim/lr": schedule(count)}
        if stats is None:
            return (new_params, opt_state, count + 1), metrics
        acc = step_stats(carry[3], grads, params, new_params, metrics["optim/grad_norm"])
        return (new_params, opt_state, count + 1, acc), metrics

    # ---- update taps: per-row squared sums accumulated over the steps, one payload after ---------
    def step_stats(acc, grads, before, after, grad_norm):
        change = jax.tree_util.tree_map(lambda a, b: a - b, after, before)  # realised, in the param dtype
        clip = jnp.where(grad_norm < cfg.max_grad_norm, 1.0, cfg.max_grad_norm / grad_norm)  # as optax clips
        sq = jnp.stack([row_squares(stats.layout, t) for t in (grads, change)])
        return {"sq": acc["sq"] + sq, "norm": acc["norm"] + grad_norm, "clip": acc["clip"] + clip,
                "max": jnp.maximum(acc["max"], grad_norm)}

    def stats_payload(acc, w_sq, count):
        # the weights are read once, before the update's first step, not once per step: one
        # pass over every parameter less per step, and a few steps move them by well under 1%
        figures = jnp.stack([acc["norm"] / n_steps, acc["max"], acc["clip"] / n_steps])
        squares = jnp.concatenate([acc["sq"] / n_steps, w_sq[None]])
        return pack_update(count, n_steps, figures, squares)

    def update(params, opt_state, batch, key, count):
        R = batch["ids"].shape[0]
        if R % cfg.minibatches:
            raise ValueError(f"{R} rows do not split into {cfg.minibatches} minibatches")
        perms = jnp.stack([jax.random.permutation(k, R) for k in jax.random.split(key, cfg.epochs)])
        order = perms.reshape(cfg.epochs * cfg.minibatches, R // cfg.minibatches)

        # [n_minibatches, rows, ...] per key; position_ids keep their leading mRoPE axis
        mbs = {k: jnp.stack([jnp.take(v, idx, axis=1 if k == "position_ids" else 0) for idx in order])
               for k, v in batch.items()}
        if mesh is not None:  # [minibatch, rows, ...]: the rows of each on the data axis
            mbs = constrain(mbs, batch_tree_shardings(mbs, mesh, lead=1))
        if stats is None:
            (params, opt_state, count), metrics = jax.lax.scan(step, (params, opt_state, count), mbs)
            return params, opt_state, jax.tree_util.tree_map(jnp.mean, metrics)
        zero = jnp.zeros((), jnp.float32)
        acc = {"sq": jnp.zeros((2, stats.layout.rows), jnp.float32), "norm": zero, "clip": zero, "max": zero}
        w_sq = row_squares(stats.layout, params)
        (params, opt_state, _, acc), metrics = jax.lax.scan(step, (params, opt_state, count, acc), mbs)
        return params, opt_state, jax.tree_util.tree_map(jnp.mean, metrics), stats_payload(acc, w_sq, count)

    jitted = jax.jit(update, donate_argnums=(0, 1))
    if stats is None:
        return jitted
    # The reduced payload leaves the update as an output and its ONE host callback runs in a
    # jitted program of its own, on the finished buffer: a callback inside the update made
    # XLA's CPU client run the whole update synchronously on the calling thread, measured at
    # 0.81-0.93 of the untapped update's rate on the tiny model (scripts/bench_train.py, 2-core
    # VM under load), and an emit that waited on the running update 0.88; this way 0.96.
    emit = jax.jit(lambda payload: tap_callback.emit(stats.callback, payload))

    def tapped(params, opt_state, batch, key, count):
        params, opt_state, metrics, payload = jitted(params, opt_state, batch, key, count)
        # wait for the update here (every caller waits for its metrics next anyway), so the
        # emit runs on a ready buffer instead of parking in the runtime until it is
        emit(jax.block_until_ready(payload))
        return params, opt_state, metrics

    tapped.jitted, tapped.emit = jitted, emit  # the two programs, for tests that read their jaxprs
    return tapped


def make_scorer(apply_fn, prompt_len: int, vinputs_all=None):
    """Jitted `score(params, batch) -> (logp [R, N], entropy [R, N])` over a whole rollout."""

    def score(params, batch):
        return completion_logp(apply_fn, params, {**batch, "vinputs": vinputs_all}, prompt_len)

    return jax.jit(score)


# ---- per-token credit ---------------------------------------------------------------------------

def token_credit(logp, old_logp, ref_logp, adv, mask, cfg: PPOConfig):
    """credit_t = (d loss / d logp_t) * logp_t for every completion token, float32 [R, N].

    The loss is the minibatch loss above with entropy held fixed, so the sign says which
    way the update pushes each token (negative: made more likely) scaled by its surprise.
    """
    def loss_of_logp(lp):
        return policy_loss(lp, jnp.zeros_like(lp), old_logp, ref_logp, adv, mask, cfg)[0]

    return jax.grad(loss_of_logp)(logp) * logp * mask


def numpy_metrics(metrics: dict) -> dict:
    """Device scalars -> Python floats (one transfer)."""
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


__all__ = ["PPOConfig", "group_advantages", "completion_logp", "token_terms", "policy_loss", "make_update",
           "make_scorer", "token_credit", "numpy_metrics", "masked_mean"]
