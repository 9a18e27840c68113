"""Every benchmark in scripts/ still runs and ends with the JSON line the README quotes.

Run with tiny settings: this checks that the scripts work and report the figures they
promise, never how fast anything is (machines are shared and noisy).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "bench_render": (["--frames", "4", "--seconds", "1.5"],
                     {"ms_160x50", "steady_bytes_ratio", "cpu_share", "enqueue_us", "enqueue_us_no_dashboard",
                      "enqueue_us_net", "first_frame_s"}),
    "bench_matrix": (["--repeats", "2", "--width", "100", "--height", "30"], {"ms_64", "ms_4096", "ratio_4096_64"}),
    "bench_taps": (["--new-tokens", "8", "--reps", "1", "--prompt-len", "8", "--contexts", "128"],
                   {"ratio_on_off", "bytes_per_emit", "callback_errors", "bus_dropped"}),
    "bench_decode": (["--new-tokens", "4", "--reps", "1", "--prompt-len", "8"],
                     {"ratio_vs_hf", "ours_tokens_per_s", "hf_tokens_per_s", "tokens_match"}),
    "bench_analyze": (["--sizes-mb", "0.3,0.6", "--steps", "2"],
                      {"s_per_100mb", "cpu_s_per_100mb", "mb_per_s", "figures_s", "peak_rss_mb", "rss_growth"}),
    "bench_rl_views": ([], {"max_ratio", "max_update_ratio"}),
    "bench_train": (["--steps-per-block", "1", "--blocks", "1", "--warmup", "1", "--update-pairs", "2"],
                    {"updates_per_s_plain", "updates_per_s_tui", "ratio_tui", "ratio_update_taps",
                     "update_payload_bytes", "update_event_json_bytes", "update_payload_bytes_2b"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_ends_with_its_json_line(name):
    args, keys = CASES[name]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name + ".py"), *args], cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 2, "a table before the JSON line"
    result = json.loads(lines[-1])
    assert keys <= set(result), f"missing {sorted(keys - set(result))}"
    for key in keys:
        value = result[key]
        if isinstance(value, float):
            assert value == value, f"{key} is NaN"  # a figure the README could quote
    if name == "bench_taps":
        assert result["callback_errors"] == 0
    if name == "bench_train":
        assert result["update_events"] == 3 and result["update_payload_bytes_2b"] == 6444  # one per tapped update
    if name == "bench_decode":
        assert result["tokens_match"] is not False  # greedy tokens equal HF's
