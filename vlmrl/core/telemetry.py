"""What a training run publishes: its RunInfo, its memory plan, a status while it compiles,
per-update TrainingState and CreditState (and UpdateStats from the update taps), the
progress line, and the RunEnd record.

Events go to the bus (the dashboard, the recorder and the plain log subscribe to it);
nothing here draws or writes a file.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vlmrl.core.mesh import mesh_shape
from vlmrl.core.rollout import make_batch
from vlmrl.instrument.events import GROUP_MAX_CELLS, GROUP_MAX_ROWS, CreditState, GroupState, RunEnd, RunInfo, TrainingState
from vlmrl.instrument.tap_host import UpdateTapHost
from vlmrl.models.qwen3vl.processor import ImageProcessorConfig
from vlmrl.plan.live import plan_event
from vlmrl.plan.spec import RunSpec


def cache_slots(trainer) -> tuple:
    """(prompt slots, completion slots) of one rollout row: the sampler's length buckets."""
    sc = trainer.sampler.config
    n = len(make_batch(trainer.env, trainer.codec, trainer.args.seed, 0, 1).prompt_ids[0])
    return (next(b for b in sc.prompt_buckets if b >= n), next(b for b in sc.new_token_buckets if b >= trainer.max_new))


def run_info(trainer) -> RunInfo:
    """The shape of the run, read from what it holds: the dtype of the KV cache the sampler
    allocates and of the weights, cache slots of one rollout (prompt + completion buckets),
    batch rows, the LLM layers DeepStack feeds, the device and its memory."""
    t = trainer.config.text
    cache = sum(cache_slots(trainer))
    rows = trainer.args.batch * trainer.args.group
    kv = trainer.sampler.kv_cache_spec(rows, cache)
    kind, in_use, limit, source = device_memory()
    per_use, per_limit = devices_memory()
    return RunInfo(model_name=trainer.config.name, num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads,
                   num_kv_heads=t.num_key_value_heads, head_dim=t.head_dim, dtype=str(kv.k.dtype),
                   weights_dtype=array_dtypes(trainer.params), max_cache=cache, batch=rows,
                   vision_depth=trainer.config.vision.depth,
                   # DeepStack adds the features of the i-th listed vision block after LLM layer i
                   deepstack_layers=tuple(range(len(trainer.config.vision.deepstack_visual_indexes))),
                   device_kind=kind, device_memory_in_use=in_use, device_memory_limit=limit, memory_source=source,
                   process_index=jax.process_index(), process_count=jax.process_count(),
                   device_count=jax.device_count(), mesh_shape=mesh_shape(trainer.mesh),
                   devices_memory_in_use=per_use, devices_memory_limit=per_limit)


def array_dtypes(tree) -> str:
    """The floating dtype(s) of a tree of arrays, e.g. "bfloat16" (joined with "+" if mixed)."""
    names = sorted({str(x.dtype) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)})
    return "+".join(names) or "n/a"


def device_memory():
    """(device kind, bytes in use, bytes limit, source) of the first local device: from the
    backend where it reports memory (GPU/TPU: source "device"), else this process's
    resident memory out of the machine's (source "host")."""
    dev = jax.local_devices()[0]
    try:
        stats = dev.memory_stats()
    except Exception:  # backends without the call raise rather than return None
        stats = None
    if stats and stats.get("bytes_in_use") is not None:
        return dev.device_kind, int(stats["bytes_in_use"]), stats.get("bytes_limit"), "device"
    return dev.device_kind, resident_bytes(), host_total_bytes(), "host"


def devices_memory() -> tuple:
    """((bytes in use per local device), (bytes limit per local device)) from each device's
    own memory_stats(), or ((), ()) when any device reports none (CPU does not): a sum over
    some devices would pass for the whole."""
    in_use, limits = [], []
    for dev in jax.local_devices():
        try:
            stats = dev.memory_stats()
        except Exception:  # backends without the call raise rather than return None
            stats = None
        if not stats or stats.get("bytes_in_use") is None:
            return (), ()
        in_use.append(int(stats["bytes_in_use"]))
        limits.append(int(stats.get("bytes_limit") or 0))
    return tuple(in_use), tuple(limits)


def resident_bytes() -> Optional[int]:
    """This process's resident set size now (Linux /proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)


def host_total_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return None


def with_memory(info: RunInfo) -> RunInfo:
    """`info` with the device memory read now (republished after each update)."""
    _, in_use, limit, source = device_memory()
    per_use, per_limit = devices_memory()
    return dataclasses.replace(info, device_memory_in_use=in_use, device_memory_limit=limit, memory_source=source,
                               devices_memory_in_use=per_use, devices_memory_limit=per_limit, wall_time=time.time())


def _float_dtype(tree) -> str:
    """The dtype name of a tree's floating arrays (what the run really holds)."""
    for x in jax.tree_util.tree_leaves(tree):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.dtype(x.dtype).name
    return "float32"


def _nbytes(tree) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def memory_plan(trainer) -> MemoryPlan:
    """The memory planner's figures for this run's exact shape (buckets, image size, the
    dtypes of the arrays it holds), beside the bytes of its policy, reference and optimizer."""
    a = trainer.args
    prompt_slots, new_slots = cache_slots(trainer)
    example = make_batch(trainer.env, trainer.codec, a.seed, 0, 1)
    grid = example.image_grid_thw[0]
    merge = trainer.config.vision.spatial_merge_size
    # the processor's output grid, in pixels: planned at that size the resize is the identity
    patch = trainer.config.vision.patch_size
    h, w = int(grid[1]) * patch, int(grid[2]) * patch
    area = h * w
    spec = RunSpec(config=trainer.config, batch=a.batch, group=a.group, max_new=new_slots, images=1, image_hw=(h, w),
                   processor=ImageProcessorConfig(patch_size=patch, merge_size=merge, min_pixels=area,
                                                  max_pixels=area),
                   dtype=_float_dtype(trainer.params), optimizer_dtype=_float_dtype(trainer.opt_state),
                   minibatches=a.minibatches, prompt_len_override=prompt_slots)
    held = {"weights": _nbytes(trainer.params), "reference": _nbytes(trainer.ref_params),
            "optimizer": _nbytes(trainer.opt_state)}
    return plan_event(spec, held)


def update_taps(trainer, bus):
    """(UpdateTap for ppo.make_update, its host) publishing one UpdateStats per update to `bus`."""
    from vlmrl.core.update_stats import UpdateLayout, UpdateTap

    layout = UpdateLayout.build(trainer.params, trainer.config.text, trainer.config.vision.depth)
    host = UpdateTapHost(bus, layout.num_layers, layout.num_heads, layout.vision_depth, layout.mergers)
    return UpdateTap(layout, host.on_update), host


def credit_row(adv: np.ndarray, completion_mask: np.ndarray) -> int:
    """The sample the TOKEN CREDIT panel shows: the first one that carried signal (non-zero
    advantage) and kept a completion, else the first that kept one. A completion can be
    empty when its first token was a vision placeholder (the rollout cuts it there)."""
    kept = completion_mask.any(axis=1)
    for candidates in (kept & (np.abs(adv) > 0), kept):
        if candidates.any():
            return int(np.argmax(candidates))
    return 0


def publish_update(bus, m: dict, codec, ro, adv: np.ndarray, credits: np.ndarray) -> None:
    """One update's TrainingState and the CreditState of one of its completions."""
    bus.publish(TrainingState(
        step=m["step"], reward_mean=m["reward/mean"], reward_std=m["reward/std"], kl=m["policy/kl_ref"],
        loss=m["loss/total"], tokens_per_sec=m["times/rollout_tok_s"], policy_entropy=m["policy/entropy"],
        clip_fraction=m["policy/clip_frac"], grad_norm=m["optim/grad_norm"], learning_rate=m["optim/lr"],
        update_tokens_per_sec=m["times/update_tok_s"]))
    row = credit_row(adv, ro.completion_mask)
    mask = ro.completion_mask[row]
    bus.publish(CreditState(tokens=[codec.token_text(t) for t in ro.ids[row, ro.prompt_len:][mask]],
                            credits=[float(c) for c in credits[row][mask]], step=m["step"]))


def group_event(step: int, group: int, codec, ro, adv, logp, entropy, ref_logp, credits,
                new_logp) -> Optional[GroupState]:
    """The update's rollout groups for the group view, with the per-token arrays the update
    computed: log-prob and entropy under the sampling policy, k3 KL to the reference,
    credit, and the ratio of the token's probability after the update to before it.
    All arrays are numpy [R, N] over completion slots. Bounded: the first GROUP_MAX_ROWS
    rows (whole groups) and the first GROUP_MAX_CELLS // rows tokens of each."""
    rows = min(len(ro.texts), max(group, GROUP_MAX_ROWS // group * group))
    mask = np.asarray(ro.completion_mask[:rows], bool)
    keep = max(1, min(GROUP_MAX_CELLS // rows, int(mask.sum(axis=1).max(initial=0))))
    d = ref_logp - logp
    per_token = {"logprob": logp, "entropy": entropy, "kl": np.exp(d) - d - 1.0, "credit": credits,
                 "ratio": np.exp(new_logp - logp)}
    tokens, lengths = [], np.zeros(rows, np.int32)
    metrics = {name: np.full((rows, keep), np.nan, np.float32) for name in per_token}
    for r in range(rows):
        slots = np.flatnonzero(mask[r])  # kept completion tokens (a cut one ends the row)
        lengths[r] = len(slots)
        slots = slots[:keep]
        tokens.append([codec.token_text(int(t)) for t in ro.ids[r, ro.prompt_len + slots]])
        for name, arr in per_token.items():
            metrics[name][r, :len(slots)] = np.asarray(arr[r], np.float32)[slots]
    firsts = ro.examples[:rows:group]
    return GroupState(step=int(step), group=int(group), prompts=[ex.question for ex in firsts],
                      answers=[ex.answer for ex in firsts], texts=[str(t) for t in ro.texts[:rows]], tokens=tokens,
                      lengths=lengths, rewards=np.asarray(ro.rewards[:rows], np.float32),
                      advantages=np.asarray(adv[:rows], np.float32), metrics=metrics)


def progress_line(m: dict) -> str:
    return (f"step {m['step']:4d}  reward {m['reward/mean']:.3f}±{m['reward/std']:.3f}  "
            f"loss {m['loss/total']:+.4f}  kl {m['policy/kl_ref']:.4f}  ent {m['policy/entropy']:.3f}  "
            f"clip {m['policy/clip_frac']:.3f}  gnorm {m['optim/grad_norm']:.3f}  "
            f"rollout {m['times/rollout_tok_s']:.0f} tok/s  update {m['times/update_tok_s']:.0f} tok/s  "
            f"{m['times/step_s']:.2f}s")


class CompileStatus:
    """Until the first update lands, republish RunInfo once a second with what is compiling
    (`phase()`) and the seconds since it began, so a viewer sees the wait tick."""

    def __init__(self, bus, info: RunInfo, phase: Callable[[], str], every: float = 1.0):
        self.bus, self.info, self.phase, self.every = bus, info, phase, every
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "CompileStatus":
        self._t0 = time.monotonic()
        self._publish()
        self._thread = threading.Thread(target=self._run, name="vlmrl-compile-status", daemon=True)
        self._thread.start()
        return self

    def _publish(self) -> None:
        phase = self.phase()
        if not phase:  # the update is done; stop() publishes the cleared status
            return
        self.bus.publish(dataclasses.replace(self.info, status=f"compiling {phase}",
                                             status_seconds=round(time.monotonic() - self._t0, 1),
                                             wall_time=time.time()))

    def _run(self) -> None:
        while not self._done.wait(self.every):
            self._publish()

    def stop(self) -> None:
        """End the ticking and publish the RunInfo with no status (training from here)."""
        if self._thread is None:
            return
        self._done.set()
        self._thread.join()
        self._thread = None
        self.bus.publish(dataclasses.replace(self.info, status="", status_seconds=None, wall_time=time.time()))


def run_end(step: Optional[int], reason: str, seconds: float) -> RunEnd:
    return RunEnd(step=step, reason=reason, seconds=round(seconds, 3))
