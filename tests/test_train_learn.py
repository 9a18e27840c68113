"""The tiny Qwen3-VL learns the colour task with PPO on CPU, from scratch, by looking.

Start: the HF-style init gives a near-uniform first-token distribution over the word-level
vocabulary, so the first update's mean reward is near 1/vocab (must be <= 0.35). Goal:
the mean reward of the last 5 updates reaches 0.9. The run stops at 10 minutes (compile
included) so a regression fails instead of hanging CI; the figure asserted is the reward.
Control: on held-out examples the trained policy (greedy) scores >= 0.9 with each prompt's
own image and <= 0.35 when each prompt gets another example's image (a fixed random
derangement), so the reward comes from reading the image, not from the prompt.
"""
import time

import numpy as np
import pytest

BUDGET_S = 600.0
FLAGS = ["--env", "colors", "--model", "tiny", "--steps", "400", "--seed", "0", "--quiet"]
HELD_OUT = 10_000  # example index where the held-out evaluation set starts (training sees far fewer)


def _derangement(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if (perm != np.arange(n)).all():
            return perm


def _score(trainer, batch, perm=None) -> float:
    """Mean reward of greedy answers; with `perm`, prompt i sees the image of example perm[i]."""
    from vlmrl.core.rollout import completion_texts
    from vlmrl.envs.base import rewards_for

    n = len(batch)
    pixels = batch.pixel_values.reshape(n, -1, batch.pixel_values.shape[-1])
    if perm is not None:
        pixels = pixels[perm]
    out = trainer.sampler.generate(prompts=batch.prompt_ids, pixel_values=pixels.reshape(-1, pixels.shape[-1]),
                                   image_grid_thw=batch.image_grid_thw, max_new_tokens=trainer.max_new,
                                   temperature=0.0)
    texts = completion_texts(out.tokens, out.mask, trainer.codec, trainer.sampler.config.stop_ids)
    return float(rewards_for(trainer.env, texts, batch.examples).mean())


@pytest.mark.slow
def test_tiny_model_learns_the_colour_task_from_the_image():
    from vlmrl.core.cli import parse_args
    from vlmrl.core.rollout import make_batch
    from vlmrl.core.trainer import Trainer

    t0 = time.monotonic()
    args = parse_args(FLAGS)
    trainer = Trainer(args)
    rewards, reached = [], []
    while trainer.step < args.steps and time.monotonic() - t0 < BUDGET_S:
        rewards.append(trainer.train_step()["reward/mean"])
        if len(rewards) >= 5 and np.mean(rewards[-5:]) >= 0.9:
            reached.append((trainer.step, time.monotonic() - t0))
            break
    curve = " ".join(f"{np.mean(rewards[i:i + 10]):.2f}" for i in range(0, len(rewards), 10))
    print(f"\nreward per 10 updates: {curve}\nreached: {reached}")
    assert rewards[0] <= 0.35, rewards[:5]
    assert reached, f"mean reward of 5 updates never reached 0.9 in {len(rewards)} updates: {curve}"

    batch = make_batch(trainer.env, trainer.codec, args.seed, HELD_OUT, 128)
    own = _score(trainer, batch)
    swapped = _score(trainer, batch, _derangement(len(batch), seed=1))
    colours = [ex.answer for ex in batch.examples]
    print(f"held-out greedy reward: own image {own:.3f}, another example's image {swapped:.3f}")
    assert own >= 0.9
    assert swapped <= 0.35
    assert len(set(colours)) == len(trainer.env.answers)  # every colour is in the evaluation set
