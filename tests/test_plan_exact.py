"""The planner's exact figures equal the bytes of the arrays real runs allocate (CPU).

- a tiny PPO run (`Trainer`, the colors task): policy, reference and optimizer state as the
  trainer builds them, and the KV cache the sampler allocates inside its jitted generate;
- a tiny Hugging Face checkpoint (transformers random init + save_pretrained) planned
  with --model_dir: the loaded weights in fp32 and bf16, optax's Adam state, the KV cache.
The KV cache is seen by wrapping KVCache.init: inside jit its leaves are tracers whose
shapes and dtypes are exactly what XLA allocates.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmrl.models.qwen3vl.processor import ImageProcessorConfig
from vlmrl.plan import cli
from vlmrl.plan.devices import get_device
from vlmrl.plan.planner import make_plan
from vlmrl.plan.spec import RunSpec


def _nbytes(tree) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def _kv_nbytes(cache) -> int:
    return _nbytes(cache.k) + _nbytes(cache.v)


@pytest.mark.slow
def test_tiny_training_run_allocates_exactly_what_the_plan_says(kv_caches):
    from vlmrl.core.rollout import make_batch
    from vlmrl.core.cli import parse_args
    from vlmrl.core.trainer import Trainer

    batch, group = 2, 2
    trainer = Trainer(parse_args(["--env", "colors", "--batch", str(batch), "--group", str(group), "--steps", "1",
                                  "--minibatches", "2", "--quiet"]))
    trainer.train_step()
    info = trainer.run_info()
    new_slots = next(b for b in trainer.sampler.config.new_token_buckets if b >= trainer.max_new)
    prompts = make_batch(trainer.env, trainer.codec, 0, 0, 1)
    h, w = prompts.examples[0].image.shape[:2]
    spec = RunSpec(config=trainer.config, batch=batch, group=group, max_new=new_slots, images=1, image_hw=(h, w),
                   processor=ImageProcessorConfig(min_pixels=h * w, max_pixels=h * w), dtype="float32",
                   optimizer_dtype="float32", minibatches=2, prompt_len_override=info.max_cache - new_slots)
    plan = make_plan(spec, get_device("h100-80"))

    assert plan["vision_tokens_per_image"] == int((prompts.prompt_ids[0] == trainer.config.image_token_id).sum())
    assert plan["params_total"] == sum(int(x.size) for x in jax.tree_util.tree_leaves(trainer.params))
    assert plan["weights_bytes"] == _nbytes(trainer.params)
    assert plan["reference_bytes"] == _nbytes(trainer.ref_params)
    assert plan["optimizer_bytes"] == _nbytes(trainer.opt_state)
    assert plan["grads_bytes"] == _nbytes(trainer.params)  # jax.grad returns the parameters' shapes and dtypes
    # the sampler's jitted generate (and the run's own description of it) build one shape
    assert kv_caches and {(c.batch, c.max_len) for c in kv_caches} == {(batch * group, info.max_cache)}
    assert plan["kv_bytes"] == _kv_nbytes(kv_caches[-1])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiny_hf_checkpoint_allocates_exactly_what_the_plan_says(hf_factory, kv_caches, capsys, dtype):  # noqa: F811
    from vlmrl.core.ppo import PPOConfig
    from vlmrl.core.sampling import Sampler, SamplingConfig
    from vlmrl.models.qwen3vl.load import load_hf_checkpoint

    _, path = hf_factory()
    rows, prompt_slots, new_slots = 2, 32, 16
    assert cli.main(["--model_dir", path, "--dtype", dtype, "--optimizer_dtype", dtype, "--images", "0",
                     "--context", str(prompt_slots), "--max_new", str(new_slots), "--batch", str(rows), "--group", "1",
                     "--minibatches", "1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    model, _ = load_hf_checkpoint(path, dtype=jnp.dtype(dtype))
    from flax import nnx

    params = nnx.state(model, nnx.Param)
    assert plan["params_total"] == sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
    assert plan["weights_bytes"] == _nbytes(params)
    # optax keeps Adam's moments in the parameters' dtype: plan them in that dtype
    assert plan["optimizer_bytes"] == _nbytes(PPOConfig().optimizer().init(params))

    sampler = Sampler(model, SamplingConfig(stop_ids=(1,), pad_id=0, prompt_buckets=(prompt_slots,),
                                            new_token_buckets=(new_slots,)))
    rng = np.random.default_rng(0)
    sampler.generate(prompts=[rng.integers(2, 100, 9), rng.integers(2, 100, 20)], max_new_tokens=new_slots)
    assert kv_caches and {(c.batch, c.max_len) for c in kv_caches} == {(rows, prompt_slots + new_slots)}
    assert plan["kv_bytes"] == _kv_nbytes(kv_caches[-1])
    assert plan["kv_bytes_per_token"] * rows * (prompt_slots + new_slots) == _kv_nbytes(kv_caches[-1])
