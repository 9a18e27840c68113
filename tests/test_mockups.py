"""mockups/tui_live_mockup.txt is what the real renderer draws now (fails when stale)."""
from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("make_mockups", os.path.join(ROOT, "scripts", "make_mockups.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mockup_file_is_current():
    mod = _script()
    text, rows = mod.build()
    with open(mod.PATH, encoding="utf-8") as f:
        on_disk = f.read()
    assert on_disk == text, "mockups/tui_live_mockup.txt is stale: run python scripts/make_mockups.py"


def test_mockup_frames_show_the_three_moments():
    mod = _script()
    text, rows = mod.build()
    assert [(t, lit) for t, lit, _ in rows] == [("a step just arrived", "step arrived"),
                                               ("between two steps", "between steps"),
                                               ("the run paused", "idle")]
    frames = text.split("=== Frame ")[1:]
    assert len(frames) == 3
    assert "⚡ STEP 6 arrived" in frames[0] and "⚡" not in frames[1].split("COMPUTATION FLOW")[1].splitlines()[2]
    assert "⚡ WRITE" in frames[0].split("KV CACHE MEMORY")[1].splitlines()[0]
    # every stage carries a figure of the step: mRoPE t/h/w, the head layout, focus, slot and bytes
    assert "mRoPE t45 h45 w45" in frames[0] and "Q/K/V 16q 8kv ×128d" in frames[0]
    assert "slot 101 +112.0 KiB" in frames[0]
    for frame in frames:
        for title in ("DECODE LIVE", "COMPUTATION FLOW", "ATTENTION FLOW", "VISION INJECTION @ Token[14]",
                      "mRoPE", "TOKEN CREDIT", "KV CACHE MEMORY", "reset"):
            assert title in frame
        body = frame.splitlines()[1:41]
        assert len(body) == 40 and all(len(line) <= 120 for line in body)


def test_rl_views_mockup_is_current_and_shows_both_views():
    mod = _script()
    text = mod.build_rl()
    with open(mod.RL_PATH, encoding="utf-8") as f:
        assert f.read() == text, "mockups/rl_views_mockup.txt is stale: run python scripts/make_mockups.py"
    frames = text.split("=== Frame ")[1:]
    assert len(frames) == len(mod.RL_FRAMES)
    assert "TRAINING CHARTS" in frames[0] and "tiny_colors_seed1_lr3e-4.jsonl" in frames[1] and "EMA 0.6" in frames[1]
    assert "ROLLOUT GROUP" in frames[3] and "prompt 2/" in frames[4] and "credit" in frames[4]


def test_update_view_mockup_is_current_and_shows_the_jump():
    mod = _script()
    text = mod.build_updates()
    with open(mod.UPDATES_PATH, encoding="utf-8") as f:
        assert f.read() == text, "mockups/update_view_mockup.txt is stale: run python scripts/make_mockups.py"
    for needle in ("UPDATES · ‖Δw‖/‖w‖ per head (log)", "step 11", "4 optimizer steps", "VISION", "DS2",
                   "▶ L3", "L3 ‖Δw‖/‖w‖ over updates (log)", "exploding L3 ×"):
        assert needle in text, needle
