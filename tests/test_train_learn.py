"""The tiny Qwen3-VL learns the colour task with PPO on CPU, from scratch.

Start: the HF-style init gives a near-uniform first-token distribution over the word-level
vocabulary, so the first update's mean reward is near 1/vocab (must be <= 0.35). Goal:
the mean reward of the last 5 updates reaches 0.9. The run stops at 10 minutes (compile
included) so a regression fails instead of hanging CI; the figure asserted is the reward.
"""
import threading
import time

import numpy as np
import pytest

BUDGET_S = 600.0
FLAGS = ["--env", "colors", "--model", "tiny", "--steps", "400", "--seed", "0", "--quiet"]


@pytest.mark.slow
def test_tiny_model_learns_the_colour_task():
    from vlmrl.core.train import run_training
    from vlmrl.instrument.bus import Bus

    t0 = time.monotonic()
    stop = threading.Event()
    rewards, reached = [], []

    def on_update(m):
        rewards.append(m["reward/mean"])
        window = rewards[-5:]
        if len(window) == 5 and np.mean(window) >= 0.9:
            reached.append((m["step"], time.monotonic() - t0))
            stop.set()
        if time.monotonic() - t0 > BUDGET_S:
            stop.set()

    run_training(FLAGS, bus=Bus(), stop=stop, on_update=on_update)
    curve = " ".join(f"{np.mean(rewards[i:i + 10]):.2f}" for i in range(0, len(rewards), 10))
    print(f"\nreward per 10 updates: {curve}\nreached: {reached}")
    assert rewards[0] <= 0.35, rewards[:5]
    assert reached, f"mean reward of 5 updates never reached 0.9 in {len(rewards)} updates: {curve}"
