"""The memory planner's per-phase figures against what the backend says a real run needs.

Builds a model, then the three jitted programs of one PPO update exactly as the trainer
runs them (the sampler's generate, the scorer, ppo.make_update) at one RL shape, and reads:

- XLA's buffer assignment of each compiled program (`memory_analysis()`: temporaries,
  outputs, donated outputs). A phase's figure is the arrays alive across the run (policy,
  reference, Adam state, rollout batch) plus that program's temporaries and outputs. This
  is the backend's own account of the peak, and the CPU backend reports it (it does not
  report `memory_stats()`).
- with --rss (Linux): the process's resident-memory high-water mark while the three
  programs run once, after compiling them and resetting the mark (/proc/self/clear_refs),
  against the planner's transient figure (its peak less the resident state, which exists
  before the mark is reset).
- on a GPU/TPU: the device's own `peak_bytes_in_use`, where the backend reports it.

    python scripts/plan_vs_run.py                                   # mid-size fp32 model, CPU, ~1 min
    python scripts/plan_vs_run.py --image 192 --prompt 64 --new 16   # vision-heavy shape
    python scripts/plan_vs_run.py --preset 2b --dtype bfloat16 --batch 1 --group 2   # on a GPU

Prints a table; the last line is one JSON object with the ratios (predicted / measured).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from vlmrl.core import ppo, rollout  # noqa: E402
from vlmrl.core.sampling import Sampler, SamplingConfig  # noqa: E402
from vlmrl.models.qwen3vl import processor  # noqa: E402
from vlmrl.models.qwen3vl.config import Qwen3VLConfig, TextConfig, VisionConfig  # noqa: E402
from vlmrl.models.qwen3vl.model import Qwen3VL  # noqa: E402
from vlmrl.models.qwen3vl.positions import get_rope_index  # noqa: E402
from vlmrl.plan.planner import per_device  # noqa: E402
from vlmrl.plan.spec import Mesh, RunSpec  # noqa: E402

PHASES = ("rollout", "score", "update")


def mid_config(vocab: int) -> Qwen3VLConfig:
    """Small enough to compile in seconds, large enough that arrays dominate the figures."""
    text = TextConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, mrope_section=(4, 6, 6),
                      max_position_embeddings=4096)
    vision = VisionConfig(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                          num_position_embeddings=64, deepstack_visual_indexes=(0, 1))
    return Qwen3VLConfig(text=text, vision=vision, image_token_id=vocab - 2, video_token_id=vocab - 1,
                         vision_start_token_id=vocab - 4, vision_end_token_id=vocab - 3, name="mid")


def _nbytes(tree) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{key}:\s+(\d+) kB", fh.read()).group(1)) * 1024


def build(a):
    config = Qwen3VLConfig.preset(a.preset) if a.preset else mid_config(a.vocab)
    R = a.batch * a.group
    image = np.random.default_rng(0).integers(0, 255, (a.image, a.image, 3), dtype=np.uint8)
    area = a.image * a.image
    pixels, grid = processor.preprocess_images([image], min_pixels=area, max_pixels=area)
    n_img = processor.num_image_tokens(grid[0])
    context = a.prompt - n_img - 2
    if context < 1:
        raise SystemExit(f"--prompt {a.prompt} cannot hold an image of {n_img} tokens")
    v0, v1 = config.vision_start_token_id, config.vision_end_token_id
    prompt = [5] * (context // 2) + [v0] + [config.image_token_id] * n_img + [v1] + [6] * (context - context // 2)
    ids = np.tile(np.asarray(prompt + [7] * a.new, np.int32)[None], (R, 1))
    attn = np.ones_like(ids)
    pos, _ = get_rope_index(ids, np.tile(grid, (R, 1)), attn, config)
    batch = {"ids": ids, "attn_mask": attn, "position_ids": np.asarray(pos, np.int32),
             "pixel_values": np.tile(pixels[None], (R, 1, 1)), "completion_mask": np.ones((R, a.new), bool),
             "old_logp": np.zeros((R, a.new), np.float32), "ref_logp": np.zeros((R, a.new), np.float32),
             "adv": np.zeros(R, np.float32)}
    spec = RunSpec(config=config, batch=a.batch, group=a.group, context=context, max_new=a.new, images=1,
                   image_hw=(a.image, a.image), processor=processor.ImageProcessorConfig(min_pixels=area, max_pixels=area),
                   dtype=a.dtype, optimizer_dtype=a.dtype, minibatches=a.minibatches)
    assert spec.prompt_len == a.prompt
    gen_kw = dict(prompts=[np.asarray(prompt, np.int32)] * R, pixel_values=np.tile(pixels, (R, 1)),
                  image_grid_thw=np.tile(grid, (R, 1)), max_new_tokens=a.new)
    return config, spec, batch, grid, gen_kw


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default=None, help="a built-in preset instead of the mid-size model")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=2)
    p.add_argument("--image", type=int, default=64, help="image side in pixels (kept at its size)")
    p.add_argument("--prompt", type=int, default=192, help="prompt slots, image tokens included")
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--rss", action="store_true", help="also run the programs and read the RSS high-water mark")
    a = p.parse_args(argv)
    config, spec, batch_np, grid, gen_kw = build(a)
    dtype = jnp.dtype(a.dtype)
    R = a.batch * a.group

    model = Qwen3VL(config, dtype=dtype, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    apply_fn = rollout.logits_fn(graphdef)

    pcfg = ppo.PPOConfig(minibatches=a.minibatches, epochs=1)
    optimizer = pcfg.optimizer()
    opt_state = optimizer.init(params)
    ref = jax.tree_util.tree_map(jnp.copy, params)
    batch = jax.tree_util.tree_map(jnp.asarray, batch_np)
    score_keys = ("ids", "attn_mask", "position_ids", "pixel_values")
    sampler = Sampler(model, SamplingConfig(stop_ids=(1,), pad_id=0, prompt_buckets=(a.prompt,),
                                            new_token_buckets=(a.new,), patch_buckets=(R * int(grid.prod()),)))
    update = ppo.make_update(apply_fn, pcfg, optimizer, a.prompt,
                             rollout.vision_inputs(grid[0], R // a.minibatches, config.vision))
    score = ppo.make_scorer(apply_fn, a.prompt, rollout.vision_inputs(grid[0], R, config.vision))
    compiled = {
        "rollout": sampler.lowered(**gen_kw).compile(),
        "score": score.lower(params, {k: batch[k] for k in score_keys}).compile(),
        "update": update.lower(params, opt_state, batch, jax.random.PRNGKey(0), jnp.int32(0)).compile(),
    }
    resident = _nbytes(params) + _nbytes(ref) + _nbytes(opt_state)
    alive = {"rollout": resident, "score": resident + _nbytes(batch), "update": resident + _nbytes(batch)}
    measured = {}
    for name, exe in compiled.items():
        m = exe.memory_analysis()
        measured[name] = alive[name] + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    predicted = per_device(spec, Mesh())
    out = {"model": config.name, "dtype": a.dtype, "rows": R, "prompt": a.prompt, "new": a.new, "image": a.image,
           "resident_predicted": int(predicted["resident"]), "resident_measured": resident}
    print(f"{config.name} {a.dtype}: rows {R}, prompt {a.prompt} (image {a.image}px), new {a.new}; "
          f"backend {jax.default_backend()}")
    print(f"{'phase':<10}{'predicted':>14}{'XLA':>14}{'ratio':>8}")
    for name in PHASES:
        pred = predicted["resident"] + predicted[name]
        out[f"{name}_predicted"], out[f"{name}_xla"] = int(pred), int(measured[name])
        out[f"{name}_ratio"] = round(pred / measured[name], 4)
        print(f"{name:<10}{pred:>14,.0f}{measured[name]:>14,}{pred / measured[name]:>8.3f}")
    out["peak_ratio"] = round(predicted["peak"] / max(measured.values()), 4)
    print(f"{'peak':<10}{predicted['peak']:>14,.0f}{max(measured.values()):>14,}{out['peak_ratio']:>8.3f}")

    if a.rss or jax.default_backend() != "cpu":
        gc.collect()
        rss = a.rss and os.path.exists("/proc/self/clear_refs")
        if rss:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the high-water mark: compiling is not part of the run
            base = _status("VmRSS")
        sampler.update_params(params)
        jax.block_until_ready(sampler.generate(**gen_kw).tokens)
        sb = {k: batch[k] for k in score_keys}
        jax.block_until_ready((score(params, sb), score(ref, sb)))
        params, opt_state, metrics = update(params, opt_state, batch, jax.random.PRNGKey(0), jnp.int32(0))
        jax.block_until_ready(metrics)
        transient = predicted["peak"] - predicted["resident"]
        if rss:
            grown = _status("VmHWM") - base
            out.update(rss_growth=grown, transient_predicted=int(transient), rss_ratio=round(transient / grown, 4))
            print(f"RSS high-water growth over one rollout+score+update {grown:,} B; planner transient "
                  f"{transient:,.0f} B; ratio {transient / grown:.3f}")
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out.update(device_peak=int(stats["peak_bytes_in_use"]),
                       device_ratio=round(predicted["peak"] / stats["peak_bytes_in_use"], 4))
            print(f"device peak_bytes_in_use {stats['peak_bytes_in_use']:,}; planner peak {predicted['peak']:,.0f}; "
                  f"ratio {out['device_ratio']:.3f}")
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
