"""The planner's peak against the backend's own account of real programs (CPU, fp32).

The CPU backend does not report device memory (`memory_stats()` is None), so the figures
compared are (1) XLA's buffer assignment of the three compiled programs of one PPO update
(sampler generate, scorer, update), plus the arrays alive across them, and (2) the
process's resident-memory high-water growth while they run once (Linux). Stated margins:
within 15% of XLA per phase and at the peak; within 30% of the RSS growth (which also
holds allocator slack and host copies). bf16 is not compared on the CPU: XLA's CPU
backend computes bf16 matmuls in fp32, so its buffers are not what a GPU or TPU holds.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XLA_MARGIN = 0.15
RSS_MARGIN = 0.30


def _run(*args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plan_vs_run.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("shape", [
    ("--image", "64", "--prompt", "192", "--new", "64", "--rss"),   # text-heavy
    ("--image", "192", "--prompt", "64", "--new", "16"),             # vision-heavy (144 patches an image)
])
def test_planner_peak_is_within_the_stated_margin_of_the_real_programs(shape):
    out = _run(*shape)
    assert out["resident_predicted"] == out["resident_measured"]  # exact
    for phase in ("rollout", "score", "update", "peak"):
        assert abs(out[f"{phase}_ratio"] - 1) <= XLA_MARGIN, (phase, out)
    if "rss_ratio" in out:
        assert abs(out["rss_ratio"] - 1) <= RSS_MARGIN, out
