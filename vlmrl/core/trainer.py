"""The PPO loop: a policy, its frozen reference, the optimizer, the sampler and the step count.

One update (`Trainer.train_step`) = rollout (`group` samples of each of `batch` prompts
through the sampler) -> rewards -> group-relative advantages -> one jitted PPO update
(ppo.py). What an update publishes for the dashboard and the log is in telemetry.py.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlmrl.core import checkpoint, checkpoint_dir, distributed, mesh as meshlib, ppo, rollout, telemetry
from vlmrl.core.cli import Args, UsageError, resolved_dtype
from vlmrl.core.sampling import Sampler
from vlmrl.envs.shapes import make_env


# Share of the update time the after-update ratio pass of the group event may take.
RATIO_BUDGET = 0.05


class Trainer:
    """Owns the policy, its frozen reference, the optimizer, the sampler and the step count."""

    def __init__(self, args: Args, bus=None, tap=None, workdir: Optional[str] = None):
        self.args, self.bus = args, bus
        self.env = make_env(args.env)
        self.max_new = args.max_new_tokens or self.env.max_new_tokens
        if args.ckpt:  # before the tokenizer is written there: never write into someone else's directory
            try:
                checkpoint.claim(args.ckpt)
                held = checkpoint_dir.latest_step(args.ckpt)
            except checkpoint.CheckpointError as exc:
                raise UsageError(f"--ckpt: {exc}") from None
            if held is not None and not args.resume:
                raise UsageError(f"--ckpt {args.ckpt} already holds checkpoints up to step {held}: "
                                 f"pass --resume to continue that run, or pick another directory")
            if held is not None:  # another run's checkpoints: refuse before its tokenizer is replaced
                try:
                    self.same_run(args.ckpt, checkpoint.step_meta(args.ckpt, held))
                except checkpoint.CheckpointError as exc:
                    raise UsageError(f"--resume: {exc}") from None
        # the other processes keep their tokenizer copy in a temporary directory
        base = workdir or (args.ckpt if jax.process_index() == 0 else None)
        tok_dir = os.path.join(base, "tokenizer") if base else None
        try:
            model, self.config, self.codec = rollout.build_policy(args.model, self.env, args.seed, args.model_dir,
                                                                  workdir=tok_dir, dtype=jnp.dtype(resolved_dtype(args)))
        except Exception as exc:  # the user's directory: tokenizers/safetensors raise their own types
            if args.model_dir is None:
                raise
            raise UsageError(f"cannot load --model_dir {args.model_dir!r}: {type(exc).__name__}: {exc}") from exc
        missing = [a for a in self.env.answers if self.codec.encode(a) == self.codec.encode("[UNK]")]
        if missing:
            raise UsageError(f"the tokenizer has no token for the answers {missing} of env {args.env!r}")
        t = self.config.text
        if tap is not None and tap.matrix_layer is not None and tap.matrix_layer >= t.num_hidden_layers:
            raise UsageError(f"--matrix_layer {tap.matrix_layer}: the model has {t.num_hidden_layers} layers")
        if tap is not None and tap.matrix_head is not None and tap.matrix_head >= t.num_attention_heads:
            raise UsageError(f"--matrix_head {tap.matrix_head}: the model has {t.num_attention_heads} heads")
        # the device mesh (--mesh); on one device nothing is placed and the programs stay plain
        self.mesh = meshlib.make_mesh(meshlib.parse_mesh(args.mesh, jax.device_count()))
        rows = args.batch * args.group
        meshlib.check_rows(rows, self.mesh, "--batch x --group")
        meshlib.check_rows(rows // args.minibatches, self.mesh, "a minibatch (--batch x --group / --minibatches)")
        self.sharded = self.mesh.size > 1
        self.graphdef, self.params = nnx.split(model)
        if self.sharded:
            self.params = meshlib.put(self.params, meshlib.param_shardings(self.params, self.mesh))
        self.ref_params = jax.tree_util.tree_map(jnp.copy, self.params)  # frozen reference policy
        self.ppo_cfg = ppo.PPOConfig(lr=args.lr, kl_coef=args.kl_coef, ent_coef=args.ent_coef, epochs=args.epochs,
                                     minibatches=args.minibatches, final_lr_frac=args.lr_final,
                                     total_steps=args.steps * args.epochs * args.minibatches)
        self.optimizer = self.ppo_cfg.optimizer()
        self.opt_state = self.optimizer.init(self.params)
        self.layout = None  # (mesh, parameter shardings, optimizer-state shardings) when sharded
        if self.sharded:
            self.layout = (self.mesh, meshlib.param_shardings(self.params, self.mesh),
                           meshlib.param_shardings(self.opt_state, self.mesh))
            self.opt_state = meshlib.put(self.opt_state, self.layout[2])
        self.sampler = Sampler(model, rollout.sampling_config(self.codec), tap=tap, bus=bus,
                               detok=self.codec.token_text, mesh=self.mesh if self.sharded else None)
        if self.sharded:
            self.sampler.update_params(self.params)
        self.key = jax.random.PRNGKey(args.seed)
        self.step = 0
        # the update taps: with the sampler's taps on (and their update_stats switch)
        self.update_tap = self.update_host = None
        if bus is not None and tap is not None and tap.enabled and tap.update_stats:
            self.update_tap, self.update_host = telemetry.update_taps(self, bus)
        self._fns = None  # jitted score/update/credit, built at the first rollout (prompt length known)
        self.phase = "rollout (prefill + decode loop)"  # the part of an update running now (what the first compiles)
        # Publish each update's rollout groups (GroupState) when someone watches or records.
        # The ratio after the update costs one more scoring pass over the rollout: on every
        # update it took the tiny run from 0.93 to 0.74 of plain updates/s (bench_train), so it
        # runs only while its seconds stay within RATIO_BUDGET of the run's update seconds;
        # the other updates send the ratio as not measured.
        self.groups = bool(args.tui or args.record)
        self.ratio_s = self.run_s = 0.0

    # ---- jitted pieces -------------------------------------------------------------------------
    def _build(self, ro) -> None:
        R = ro.ids.shape[0]
        apply_fn = rollout.logits_fn(self.graphdef)

        mb_rows = R // self.ppo_cfg.minibatches
        score = ppo.make_scorer(apply_fn, ro.prompt_len, rollout.vision_inputs(ro.grid, R, self.config.vision))
        update = ppo.make_update(apply_fn, self.ppo_cfg, self.optimizer, ro.prompt_len,
                                 rollout.vision_inputs(ro.grid, mb_rows, self.config.vision), stats=self.update_tap,
                                 layout=self.layout)
        credit = jax.jit(lambda *a: ppo.token_credit(*a, self.ppo_cfg))
        self._fns = (ro.ids.shape, score, update, credit)

    # ---- one update ----------------------------------------------------------------------------
    def train_step(self) -> dict:
        a, t0 = self.args, time.perf_counter()
        k_roll, k_upd = jax.random.split(jax.random.fold_in(self.key, self.step))
        self.phase = "rollout (prefill + decode loop)"
        ro = rollout.collect(self.sampler, self.env, self.codec, self.config, seed=a.seed, step=self.step,
                             batch=a.batch, group=a.group, max_new_tokens=self.max_new,
                             temperature=a.temperature, key=k_roll)
        if self._fns is None or self._fns[0] != ro.ids.shape:
            self._build(ro)
        _, score, update, credit = self._fns
        self.phase = "PPO update (score + update)"
        t1 = time.perf_counter()
        batch = {"ids": ro.ids, "attn_mask": ro.attn_mask, "position_ids": ro.position_ids,
                 "pixel_values": ro.pixel_values, "completion_mask": ro.completion_mask}
        batch = rollout.to_device(batch, self.mesh if self.sharded else None)
        adv = ppo.group_advantages(ro.rewards, a.group, self.ppo_cfg.adv_eps)
        old_logp, old_entropy = score(self.params, batch)
        ref_logp, _ = score(self.ref_params, batch)
        credits = credit(old_logp, old_logp, ref_logp, adv, batch["completion_mask"])
        count = jnp.int32(self.step * a.epochs * a.minibatches)
        self.params, self.opt_state, metrics = update(
            self.params, self.opt_state, {**batch, "old_logp": old_logp, "ref_logp": ref_logp, "adv": adv},
            k_upd, count)
        m = ppo.numpy_metrics(metrics)  # waits for the update
        t2 = time.perf_counter()
        self.sampler.update_params(self.params)
        self.phase = ""  # nothing left to compile in this update: the status stops ticking
        rows = ro.ids.shape[0]
        m.update({"step": self.step, "reward/mean": float(ro.rewards.mean()), "reward/std": float(ro.rewards.std()),
                  "times/rollout_s": t1 - t0, "times/update_s": t2 - t1, "times/step_s": t2 - t0,
                  "times/rollout_tok_s": ro.gen_tokens / max(ro.seconds, 1e-9),
                  "times/update_tok_s": rows * ro.ids.shape[1] * a.epochs / max(t2 - t1, 1e-9)})
        if self.bus is not None:
            telemetry.publish_update(self.bus, m, self.codec, ro, distributed.to_host(adv), distributed.to_host(credits))
            if self.groups:
                self.run_s += t2 - t0
                new_logp = None
                # clocks differ between processes: process 0 decides whether the extra pass runs
                if distributed.broadcast_flag(self.ratio_s <= RATIO_BUDGET * self.run_s):
                    t3 = time.perf_counter()
                    new_logp = distributed.to_host(score(self.params, batch)[0])
                    self.ratio_s += time.perf_counter() - t3
                arrays = distributed.host_tree((adv, old_logp, old_entropy, ref_logp, credits))
                arrays += (np.full_like(arrays[1], np.nan) if new_logp is None else new_logp,)
                event = telemetry.group_event(self.step, a.group, self.codec, ro, *arrays)
                if event is not None:
                    self.bus.publish(event)
        self.step += 1
        return m

    # ---- checkpoints ---------------------------------------------------------------------------
    def meta(self) -> dict:
        a = self.args
        return {"env": a.env, "seed": a.seed, "model": a.model_dir or a.model, "batch": a.batch, "group": a.group}

    def same_run(self, directory: str, meta: dict) -> None:
        """UsageError when a checkpoint's saved meta is another run's (checked before its
        arrays: another env or model differs in shapes too, which would hide the reason)."""
        if meta and meta != self.meta():
            raise UsageError(f"--resume: checkpoint in {directory} was made with {meta}, this run is {self.meta()}")

    def save(self, directory: str) -> str:
        try:
            return checkpoint.save(directory, self.step, self.params, self.opt_state, self.key, self.meta())
        except checkpoint.CheckpointError as exc:
            raise UsageError(f"--ckpt: {exc}") from None

    def restore(self, directory: str) -> bool:
        """Load the newest checkpoint in `directory` onto this run's shardings (the mesh may
        differ from the one that saved it); False when there is none."""
        try:
            if checkpoint_dir.latest_step(directory) is None:
                return False
            step, params, opt_state, rng, meta = checkpoint.restore(directory, self.params, self.opt_state,
                                                                    check_meta=lambda m: self.same_run(directory, m))
        except (checkpoint.CheckpointError, FileNotFoundError) as exc:
            raise UsageError(f"--resume: {exc}") from None
        if self.sharded:
            params, opt_state = meshlib.put(params, self.layout[1]), meshlib.put(opt_state, self.layout[2])
        self.step, self.params, self.opt_state, self.key = step, params, opt_state, jnp.asarray(rng)
        self.sampler.update_params(self.params)
        return True

    def run_info(self):
        return telemetry.run_info(self)
