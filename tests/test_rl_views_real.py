"""The charts and group views on a tiny run recorded afresh (once per session): the
trainer's GroupState events are in the log, round-trip, and the views show them and the
logged scalars on a terminal (pyte) at 80x24, 120x40 and 200x60."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import SIZES, check_charts_show_logged_values, check_group_view, last_group, raw_lines
from vlmrl.instrument.events import GROUP_METRICS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _record(path, seed, steps):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-m", "vlmrl.core.train", "--steps", str(steps), "--batch", "2",
                          "--group", "4", "--seed", str(seed), "--record", str(path), "--quiet"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return str(path)


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("rlviews")
    return _record(d / "a.jsonl", 0, 5), _record(d / "b.jsonl", 1, 4)


def test_every_update_records_one_bounded_group_event_consistent_with_itself(runs):
    recs = raw_lines(runs[0])
    groups = [r for r in recs if r["kind"] == "group"]
    steps = [r["step"] for r in recs if r["kind"] == "training"]
    assert [g["step"] for g in groups] == steps == list(range(5))
    g = last_group(runs[0])
    rows = len(g["texts"])
    assert rows == 2 * 4 and g["group"] == 4 and len(g["prompts"]) == 2
    assert sorted(g["metrics"]) == sorted(GROUP_METRICS)
    for name, arr in g["metrics"].items():
        assert arr.shape[0] == rows and arr.size <= 2048
        for r in range(rows):
            n = len(g["tokens"][r])
            assert n == min(int(g["lengths"][r]), arr.shape[1])
            if name == "ratio" and np.isnan(arr).all():
                continue  # an update past the ratio pass's time budget sends it as not measured
            assert np.isfinite(arr[r, :n]).all() and np.isnan(arr[r, n:]).all()
    m = g["metrics"]
    sent = np.isfinite(m["logprob"])
    assert (m["logprob"][sent] <= 0).all() and (m["entropy"][sent] >= 0).all()
    assert (m["kl"][sent] >= -1e-6).all()
    # the first update always measures the ratio after the update; later ones within a budget
    ratio = last_group(runs[0], first=True)["metrics"]["ratio"]
    assert np.isfinite(ratio).any() and (ratio[np.isfinite(ratio)] > 0).all()
    # the advantages are the group-relative rewards (numpy oracle)
    r = g["rewards"].reshape(-1, 4)
    std = r.std(axis=1, keepdims=True)
    adv = np.where(std > 0, (r - r.mean(axis=1, keepdims=True)) / (std + 1e-4), 0.0).reshape(-1)
    np.testing.assert_allclose(g["advantages"], adv, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", SIZES)
def test_charts_of_a_fresh_run_plot_its_logged_scalars(runs, size):
    check_charts_show_logged_values(runs[0], size)
    check_charts_show_logged_values(runs[0], size, compare_path=runs[1])


@pytest.mark.parametrize("size", SIZES)
def test_group_view_of_a_fresh_run(runs, size):
    check_group_view(runs[0], size)
