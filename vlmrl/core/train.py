"""PPO on Qwen3-VL with an optional live dashboard.

  python -m vlmrl.core.train --env colors --model tiny --steps 200 [--model_dir HF_DIR]
      [--tui] [--record FILE] [--seed N] [--ckpt DIR] [--resume]

One update = rollout (`group` samples of each of `batch` prompts through the sampler)
-> rewards -> group-relative advantages -> one jitted PPO update (ppo.py). Without --tui
each update prints one plain line; with --tui the dashboard shows DecodeState (sampler
taps), TrainingState (every update) and CreditState (one completion per update).
`run_training(argv)` is the same run as a function (the dashboard demo calls it).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
from typing import Callable, List, Optional

import numpy as np


def _f(default, doc: str):
    """A dataclass field whose one-line doc is also its --help text."""
    return dataclasses.field(default=default, metadata={"help": doc})


@dataclasses.dataclass
class Args:
    env: str = _f("colors", "task: colors | count")
    model: str = _f("tiny", "built-in model preset (only tiny is built from scratch)")
    model_dir: Optional[str] = _f(None, "Hugging Face checkpoint directory instead of --model")
    steps: int = _f(200, "PPO updates to run (total, counting resumed ones)")
    seed: int = _f(0, "seeds data, init and sampling")
    batch: int = _f(8, "prompts per update")
    group: int = _f(8, "samples per prompt (group-relative advantages)")
    max_new_tokens: Optional[int] = _f(None, "completion length cap (None: the env's default)")
    temperature: float = _f(1.0, "rollout sampling temperature")
    lr: float = _f(7e-4, "AdamW learning rate")
    lr_final: float = _f(0.1, "learning rate at the last of --steps, as a fraction of --lr (cosine decay; 1: constant)")
    kl_coef: float = _f(0.01, "KL penalty weight to the frozen reference")
    ent_coef: float = _f(0.03, "entropy bonus weight (keeps exploring until the image matters)")
    epochs: int = _f(2, "passes over each rollout")
    minibatches: int = _f(2, "minibatches per pass")
    tui: bool = _f(False, "live dashboard")
    record: Optional[str] = _f(None, "write every event to this JSONL log")
    ckpt: Optional[str] = _f(None, "checkpoint directory")
    ckpt_every: int = _f(50, "updates between checkpoints (and one at the end)")
    resume: bool = _f(False, "continue from the newest checkpoint in --ckpt")
    quiet: bool = _f(False, "no progress lines")


class UsageError(ValueError):
    """A bad flag or input directory; the CLI prints it and exits with code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlmrl.core.train", description=__doc__.split("\n")[0])
    defaults = Args()
    for f in dataclasses.fields(Args):
        flag, default = "--" + f.name, getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            kind = {"max_new_tokens": int}.get(f.name, type(default) if default is not None else str)
            p.add_argument(flag, type=kind, default=default, help=f"{f.metadata['help']} (default {default})")
    return p


def parse_args(argv: Optional[List[str]] = None) -> Args:
    """Flags -> Args; argparse exits 2 on unknown flags, `validate` raises UsageError."""
    ns = build_parser().parse_args(argv)
    args = Args(**vars(ns))
    validate(args)
    return args


def validate(args: Args) -> None:
    from vlmrl.envs.shapes import ENVS

    if args.env not in ENVS:
        raise UsageError(f"--env {args.env!r}: choose one of {sorted(ENVS)}")
    if args.model_dir is None and args.model != "tiny":
        raise UsageError(f"--model {args.model!r}: only 'tiny' is built in; pass --model_dir for a checkpoint")
    for name in ("steps", "batch", "group", "epochs", "minibatches", "ckpt_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.group < 2:
        raise UsageError(f"--group must be >= 2 (advantages are relative within a group), got {args.group}")
    if (args.batch * args.group) % args.minibatches:
        raise UsageError(f"--batch x --group = {args.batch * args.group} rows do not split into "
                         f"--minibatches {args.minibatches}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if not args.temperature > 0:
        raise UsageError(f"--temperature must be > 0 for PPO rollouts, got {args.temperature}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.lr_final <= 1:
        raise UsageError(f"--lr_final must be a fraction of --lr in [0, 1], got {args.lr_final}")
    if args.resume and not args.ckpt:
        raise UsageError("--resume needs --ckpt DIR")
    if args.model_dir is not None:
        d = args.model_dir
        if not os.path.isdir(d):
            raise UsageError(f"--model_dir {d!r} is not a directory")
        missing = [f for f in ("config.json", "tokenizer.json") if not os.path.isfile(os.path.join(d, f))]
        if missing:
            raise UsageError(f"--model_dir {d!r} is not a Qwen3-VL checkpoint: missing {', '.join(missing)}")
        if not any(f.endswith(".safetensors") for f in os.listdir(d)):
            raise UsageError(f"--model_dir {d!r} has no *.safetensors weights")
    if args.record:
        parent = os.path.dirname(os.path.abspath(args.record))
        if not os.path.isdir(parent):
            raise UsageError(f"--record {args.record!r}: directory {parent} does not exist")


def credit_row(adv: np.ndarray, completion_mask: np.ndarray) -> int:
    """The sample the TOKEN CREDIT panel shows: the first one that carried signal (non-zero
    advantage) and kept a completion, else the first that kept one. A completion can be
    empty when its first token was a vision placeholder (the rollout cuts it there)."""
    kept = completion_mask.any(axis=1)
    for candidates in (kept & (np.abs(adv) > 0), kept):
        if candidates.any():
            return int(np.argmax(candidates))
    return 0


def progress_line(m: dict) -> str:
    return (f"step {m['step']:4d}  reward {m['reward/mean']:.3f}±{m['reward/std']:.3f}  "
            f"loss {m['loss/total']:+.4f}  kl {m['policy/kl_ref']:.4f}  ent {m['policy/entropy']:.3f}  "
            f"clip {m['policy/clip_frac']:.3f}  gnorm {m['optim/grad_norm']:.3f}  "
            f"rollout {m['times/rollout_tok_s']:.0f} tok/s  update {m['times/update_tok_s']:.0f} tok/s  "
            f"{m['times/step_s']:.2f}s")


class Trainer:
    """Owns the policy, its frozen reference, the optimizer, the sampler and the step count."""

    def __init__(self, args: Args, bus=None, tap=None, workdir: Optional[str] = None):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from vlmrl.core import ppo, rollout
        from vlmrl.core.sampling import Sampler
        from vlmrl.envs.shapes import make_env

        self.args, self.bus = args, bus
        self.env = make_env(args.env)
        self.max_new = args.max_new_tokens or self.env.max_new_tokens
        base = workdir or args.ckpt
        tok_dir = os.path.join(base, "tokenizer") if base else None
        try:
            model, self.config, self.codec = rollout.build_policy(args.model, self.env, args.seed, args.model_dir,
                                                                  workdir=tok_dir)
        except Exception as exc:  # the user's directory: tokenizers/safetensors raise their own types
            if args.model_dir is None:
                raise
            raise UsageError(f"cannot load --model_dir {args.model_dir!r}: {type(exc).__name__}: {exc}") from exc
        missing = [a for a in self.env.answers if self.codec.encode(a) == self.codec.encode("[UNK]")]
        if missing:
            raise UsageError(f"the tokenizer has no token for the answers {missing} of env {args.env!r}")
        self.graphdef, self.params = nnx.split(model)
        self.ref_params = jax.tree_util.tree_map(jnp.copy, self.params)  # frozen reference policy
        self.ppo_cfg = ppo.PPOConfig(lr=args.lr, kl_coef=args.kl_coef, ent_coef=args.ent_coef, epochs=args.epochs,
                                     minibatches=args.minibatches, final_lr_frac=args.lr_final,
                                     total_steps=args.steps * args.epochs * args.minibatches)
        self.optimizer = self.ppo_cfg.optimizer()
        self.opt_state = self.optimizer.init(self.params)
        self.sampler = Sampler(model, rollout.sampling_config(self.codec), tap=tap, bus=bus,
                               detok=self.codec.token_text)
        self.key = jax.random.PRNGKey(args.seed)
        self.step = 0
        self._fns = None  # jitted score/update/credit, built at the first rollout (prompt length known)

    # ---- jitted pieces -------------------------------------------------------------------------
    def _build(self, ro) -> None:
        import jax
        from flax import nnx

        from vlmrl.core import ppo, rollout

        graphdef, R = self.graphdef, ro.ids.shape[0]

        def apply_fn(params, b):
            pv = b["pixel_values"]
            logits, _, _ = nnx.merge(graphdef, params).forward(
                b["ids"], b["attn_mask"], b["position_ids"], pixel_values=pv.reshape(-1, pv.shape[-1]),
                vinputs=b["vinputs"])
            return logits

        mb_rows = R // self.ppo_cfg.minibatches
        score = ppo.make_scorer(apply_fn, ro.prompt_len, rollout.vision_inputs(ro.grid, R, self.config.vision))
        update = ppo.make_update(apply_fn, self.ppo_cfg, self.optimizer, ro.prompt_len,
                                 rollout.vision_inputs(ro.grid, mb_rows, self.config.vision))
        credit = jax.jit(lambda *a: ppo.token_credit(*a, self.ppo_cfg))
        self._fns = (ro.ids.shape, score, update, credit)

    # ---- one update ----------------------------------------------------------------------------
    def train_step(self) -> dict:
        import jax
        import jax.numpy as jnp

        from vlmrl.core import ppo, rollout
        from vlmrl.instrument.events import CreditState, TrainingState

        a, t0 = self.args, time.perf_counter()
        k_roll, k_upd = jax.random.split(jax.random.fold_in(self.key, self.step))
        ro = rollout.collect(self.sampler, self.env, self.codec, self.config, seed=a.seed, step=self.step,
                             batch=a.batch, group=a.group, max_new_tokens=self.max_new,
                             temperature=a.temperature, key=k_roll)
        if self._fns is None or self._fns[0] != ro.ids.shape:
            self._build(ro)
        _, score, update, credit = self._fns
        t1 = time.perf_counter()
        batch = {"ids": ro.ids, "attn_mask": ro.attn_mask, "position_ids": ro.position_ids,
                 "pixel_values": ro.pixel_values, "completion_mask": ro.completion_mask}
        batch = rollout.to_device(batch)
        adv = ppo.group_advantages(ro.rewards, a.group, self.ppo_cfg.adv_eps)
        old_logp, _ = score(self.params, batch)
        ref_logp, _ = score(self.ref_params, batch)
        credits = credit(old_logp, old_logp, ref_logp, adv, batch["completion_mask"])
        count = jnp.int32(self.step * a.epochs * a.minibatches)
        self.params, self.opt_state, metrics = update(
            self.params, self.opt_state, {**batch, "old_logp": old_logp, "ref_logp": ref_logp, "adv": adv},
            k_upd, count)
        m = ppo.numpy_metrics(metrics)  # waits for the update
        t2 = time.perf_counter()
        self.sampler.update_params(self.params)
        rows = ro.ids.shape[0]
        m.update({"step": self.step, "reward/mean": float(ro.rewards.mean()), "reward/std": float(ro.rewards.std()),
                  "times/rollout_s": t1 - t0, "times/update_s": t2 - t1, "times/step_s": t2 - t0,
                  "times/rollout_tok_s": ro.gen_tokens / max(ro.seconds, 1e-9),
                  "times/update_tok_s": rows * ro.ids.shape[1] * a.epochs / max(t2 - t1, 1e-9)})
        if self.bus is not None:
            self.bus.publish(TrainingState(
                step=self.step, reward_mean=m["reward/mean"], reward_std=m["reward/std"], kl=m["policy/kl_ref"],
                loss=m["loss/total"], tokens_per_sec=m["times/rollout_tok_s"], policy_entropy=m["policy/entropy"],
                clip_fraction=m["policy/clip_frac"], grad_norm=m["optim/grad_norm"], learning_rate=m["optim/lr"],
                update_tokens_per_sec=m["times/update_tok_s"]))
            row = credit_row(np.asarray(adv), ro.completion_mask)
            mask = ro.completion_mask[row]
            self.bus.publish(CreditState(tokens=[self.codec.token_text(t) for t in ro.ids[row, ro.prompt_len:][mask]],
                                         credits=[float(c) for c in np.asarray(credits)[row][mask]], step=self.step))
        self.step += 1
        return m

    # ---- checkpoints ---------------------------------------------------------------------------
    def meta(self) -> dict:
        a = self.args
        return {"env": a.env, "seed": a.seed, "model": a.model_dir or a.model, "batch": a.batch, "group": a.group}

    def save(self, directory: str) -> str:
        from vlmrl.core import checkpoint

        return checkpoint.save(directory, self.step, self.params, self.opt_state, self.key, self.meta())

    def restore(self, directory: str) -> bool:
        """Load the newest checkpoint in `directory` if there is one; False when there is none."""
        import jax.numpy as jnp

        from vlmrl.core import checkpoint

        if checkpoint.read_manifest(directory) is None:
            return False
        step, params, opt_state, rng, meta = checkpoint.restore(directory, self.params, self.opt_state)
        if meta and meta != self.meta():
            raise UsageError(f"--resume: checkpoint in {directory} was made with {meta}, this run is {self.meta()}")
        self.step, self.params, self.opt_state, self.key = step, params, opt_state, jnp.asarray(rng)
        self.sampler.update_params(self.params)
        return True

    def run_info(self):
        from vlmrl.instrument.events import RunInfo

        from vlmrl.core.rollout import make_batch

        t, sc = self.config.text, self.sampler.config
        n = len(make_batch(self.env, self.codec, self.args.seed, 0, 1).prompt_ids[0])
        cache = (next(b for b in sc.prompt_buckets if b >= n)
                 + next(b for b in sc.new_token_buckets if b >= self.max_new))
        return RunInfo(model_name=self.config.name, num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads,
                       num_kv_heads=t.num_key_value_heads, head_dim=t.head_dim, dtype="float32",
                       max_cache=cache, batch=self.args.batch * self.args.group,
                       vision_depth=self.config.vision.depth,
                       deepstack_layers=tuple(self.config.vision.deepstack_visual_indexes))


def run_training(argv=None, *, bus=None, log: Optional[Callable[[str], None]] = None,
                 stop: Optional[threading.Event] = None, on_update: Optional[Callable[[dict], None]] = None,
                 manage_tui: bool = True) -> List[dict]:
    """Run PPO as `python -m vlmrl.core.train` would; returns one metrics dict per update.

    argv: a list of flags or an Args. bus: where events go (default: the process bus the
    dashboard watches). log: where progress lines go (default stdout; none under --tui).
    stop: set it to end after the current update. manage_tui: with --tui, start and stop a
    LiveTUI here (a caller that already shows one passes False).
    """
    args = argv if isinstance(argv, Args) else parse_args(argv)
    validate(args)
    from vlmrl.instrument.bus import default_bus

    bus = bus if bus is not None else default_bus()
    tap = None
    if args.tui or args.record:
        from vlmrl.instrument.taps import TapConfig

        tap = TapConfig(enabled=True)
    quiet = args.quiet or args.tui  # the dashboard owns the terminal
    say = (lambda s: None) if quiet else (log or (lambda s: print(s, flush=True)))
    trainer = Trainer(args, bus=bus, tap=tap)
    if args.resume and trainer.restore(args.ckpt):
        say(f"resumed from {args.ckpt} at step {trainer.step}")
    info = trainer.run_info()
    tui = recorder = None
    history: List[dict] = []
    try:
        if args.record:
            from vlmrl.instrument.record import Recorder

            recorder = Recorder(bus, args.record, run_info=info)
        if args.tui and manage_tui:
            from vlmrl.utils.tui_live import LiveTUI

            tui = LiveTUI(num_layers=info.num_layers, num_heads=info.num_heads, max_cache=info.max_cache, bus=bus)
            tui.start()
        compiling = trainer.step < args.steps
        if compiling:
            say(f"compiling rollout and update for {args.env} (first step is slower) ...")
        # the dashboard shows the status until the first update lands
        bus.publish(dataclasses.replace(info, status="compiling rollout and update ...") if compiling else info)
        while trainer.step < args.steps and not (stop is not None and stop.is_set()):
            m = trainer.train_step()
            if compiling:
                compiling = False
                bus.publish(dataclasses.replace(info, status=""))
            history.append(m)
            say(progress_line(m))
            if on_update is not None:
                on_update(m)
            if args.ckpt and (trainer.step % args.ckpt_every == 0 or trainer.step == args.steps):
                trainer.save(args.ckpt)
        if args.ckpt and history and trainer.step % args.ckpt_every and trainer.step != args.steps:
            trainer.save(args.ckpt)  # stopped early: keep what was learned
    finally:
        if recorder is not None:
            recorder.close()
        if tui is not None:
            tui.stop()
    return history


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run_training(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
