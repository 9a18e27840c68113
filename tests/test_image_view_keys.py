"""The image view's keys beside the dashboard's: under --replay the replay keys (← → Home End
space) step the run from the image view while ↑ ↓ [ ] a o n stay the view's own, and the
mode letters switch views from it as from the other RL views. Driven through the dashboard
loop's own key step with the real tiny image run."""
from __future__ import annotations

import os
from types import SimpleNamespace

from vlmrl.utils.tui.dashboard_loop import DashboardLoop
from vlmrl.utils.tui.panels.image import get_view
from vlmrl.utils.tui.replay import ReplayLog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "tests", "data", "tiny_colors_image_seed0.jsonl")


def _replay_loop():
    replay = ReplayLog.open(RUN)
    tui = SimpleNamespace(term=None, _sub=None, replay=replay, screen=None, compare=None, flash_hz=5.0,
                          display_layers=6, depth="truecolor", fps=20.0, source="REPLAY")
    loop = DashboardLoop(tui)
    loop.store = replay.store_at(loop.make_store)
    return loop, replay


def _keys(loop, *keys):
    assert loop.apply_keys(list(keys)) is False
    loop.store = loop.replay.store_at(loop.make_store)


def test_replay_keys_step_the_run_from_the_image_view():
    loop, replay = _replay_loop()
    _keys(loop, "v")
    assert loop.view.mode == "image"
    end = replay.index
    assert end > 2
    _keys(loop, "KEY_LEFT")
    assert replay.index == end - 1 and loop.view.mode == "image"
    _keys(loop, "KEY_RIGHT")
    assert replay.index == end
    _keys(loop, "h", "h")
    assert replay.index == end - 2
    _keys(loop, "KEY_HOME")
    assert replay.index == 0
    _keys(loop, "KEY_END")
    assert replay.index == end
    _keys(loop, " ")
    assert replay.playing
    _keys(loop, " ")
    assert not replay.playing and loop.view.mode == "image"


def test_under_replay_the_image_views_own_keys_stay_its_own():
    loop, replay = _replay_loop()
    _keys(loop, "v")
    end = replay.index
    _keys(loop, "KEY_UP")  # an earlier token of the generation, not a step of the run
    assert replay.index == end and get_view(loop.view).step is not None
    _keys(loop, "KEY_DOWN", "]", "o")
    iv = get_view(loop.view)
    assert replay.index == end and iv.layer == 0 and not iv.overlay


def test_mode_letters_switch_views_from_the_image_view():
    loop, replay = _replay_loop()
    for letter, mode in (("c", "charts"), ("g", "group"), ("k", "plan"), ("u", "updates"), ("m", "matrix"),
                         ("e", "explorer")):
        _keys(loop, "v")
        assert loop.view.mode == "image"
        _keys(loop, letter)
        assert loop.view.mode == mode, letter
        _keys(loop, "KEY_ESCAPE")
        assert loop.view.mode == "dashboard"
    _keys(loop, "v", "v")  # v closes it again
    assert loop.view.mode == "dashboard"


def test_help_lists_the_image_views_own_keys():
    from conftest import scenario, screen_text
    from vlmrl.utils.tui.view import ViewState, handle_key
    store = scenario()
    view = handle_key(handle_key(ViewState(), "v", store.snapshot()), "?", store.snapshot())
    text = screen_text(store, view=view, size=(120, 40))
    line = next(ln for ln in text.splitlines() if "image view" in ln)
    for needle in ("[ ] layer", "a all layers", "↑↓ token", "o overlay", "n next image"):
        assert needle in line, (needle, line)


def test_heat_levels_keep_the_legends_glyph():
    """The quantised heat draws the glyph the legend gives the raw value (▓ <.75, █ ≥.75)."""
    import numpy as np
    from vlmrl.utils.tui import image_math
    from vlmrl.utils.tui.palette import ramp_glyph
    top = 0.0123
    raw = np.concatenate([np.linspace(0, 1, 4001), [0.734, 0.7499999, 0.75, 0.2499, 0.25, 0.499, 0.5, 1.0]])
    levels = image_math.normalise(raw * top, top)
    for r, q in zip(raw, levels):
        assert ramp_glyph(q) == ramp_glyph(float(np.float64(r * top) / top)), r
    assert ramp_glyph(image_math.normalise(np.asarray([0.734]), 1.0)[0]) == "▓"
    assert len(set(np.round(levels * image_math.LEVELS, 9))) <= image_math.LEVELS + 1


def test_image_view_and_vision_panel_name_the_grids_alike():
    """Both say "merged grid" for the image tokens' grid (the vision panel adds the patch grid):
    one image of patch grid 1×16×16, 64 tokens, seen by the decode taps and the image taps."""
    import numpy as np
    from conftest import scenario
    from vlmrl.instrument.events import ImageAttention, ImageState
    from vlmrl.utils.tui import layout
    from vlmrl.utils.tui.palette import COLOR
    from vlmrl.utils.tui.view import ViewState, handle_key
    store = scenario()  # its decode rows hold 64 image tokens of patch grid 1×16×16
    store.apply(ImageState(generation=1, grid=(1, 8, 8), size=(256, 256),
                           pixels=np.zeros((64, 64, 3), np.uint8)))
    store.apply(ImageAttention(generation=1, step=0, token_text="red", tokens=64,
                               attention=np.full((2, 64), 1 / 128, np.float16),
                               image_share=np.array([0.5, 0.5], np.float32)))
    state = store.snapshot()
    dash = layout.render_screen(state, ViewState(), 200, 60, 1000.0, COLOR).text()
    image = layout.render_screen(state, handle_key(ViewState(), "v", state), 200, 60, 1000.0, COLOR).text()
    assert "patch grid 1×16×16" in dash and "merged grid 1×8×8" in dash
    assert "merged grid 1×8×8" in image and "patches ·" not in image


def test_synthetic_run_image_view_says_it_sends_no_image():
    """--synthetic never sends an image: the view says so instead of promising one with the taps."""
    import pyte
    from vlmrl.utils.tui import layout
    from vlmrl.utils.tui.frame import FrameEncoder
    from vlmrl.utils.tui.palette import COLOR
    from vlmrl.utils.tui.store import Store
    from vlmrl.utils.tui.synthetic import SyntheticRun
    from vlmrl.utils.tui.view import ViewState, handle_key
    store = Store(clock=lambda: 1000.0, started_at=0.0)
    for ev in SyntheticRun(num_layers=4, num_heads=2, batch=1, gen_tokens=6, seed=1).take(40):
        store.apply(ev)
    state = store.snapshot().with_meta({"source": "SYNTHETIC"})
    assert state.images is None or not state.images.images
    canvas = layout.render_screen(state, handle_key(ViewState(), "v", state), 200, 40, 1000.0, COLOR)
    screen = pyte.Screen(200, 40)
    data = FrameEncoder("truecolor").encode(canvas)
    pyte.ByteStream(screen).feed(data if isinstance(data, bytes) else data.encode())
    text = "\n".join(screen.display)
    assert "a synthetic run sends decode steps, never an image or its attention" in text
    assert "arrive with the run's taps" not in text


def _heat_codes(depth, grey):
    """The colour codes a terminal of `depth` gets for the four quadrants of a uniform image
    (grey level `grey`) whose 2×2 merged patches hold 0.1, 0.3, 0.6 and 0.9 of the largest weight."""
    import re

    import numpy as np
    from vlmrl.instrument.events import ImageAttention, ImageState
    from vlmrl.utils.tui import layout, theme
    from vlmrl.utils.tui.frame import FrameEncoder
    from vlmrl.utils.tui.store import Store
    from vlmrl.utils.tui.view import ViewState, handle_key
    store = Store(clock=lambda: 1000.0, started_at=0.0)
    store.apply(ImageState(generation=1, grid=(1, 2, 2), size=(64, 64), pixels=np.full((64, 64, 3), grey, np.uint8)))
    weights = np.array([0.1, 0.3, 0.6, 0.9], np.float16) / 4
    store.apply(ImageAttention(generation=1, step=0, token_text="red", tokens=4, attention=np.stack([weights] * 2),
                               image_share=np.array([0.5, 0.5], np.float32)))
    state = store.snapshot()
    canvas = layout.render_screen(state, handle_key(ViewState(), "v", state), 120, 40, 1000.0,
                                  theme.palette_for_depth(depth))
    cells = [(x, y) for y in range(40) for x in range(120) if canvas.chars[y][x] == "▀"]
    xs, ys = sorted({x for x, _ in cells}), sorted({y for _, y in cells})
    codes = []
    for fy in (0.25, 0.75):
        for fx in (0.25, 0.75):
            x, y = xs[int(fx * len(xs))], ys[int(fy * len(ys))]
            style = canvas.styles[y][x]
            seq = theme.sgr(style, depth)
            codes.append(re.sub(r"^\x1b\[0;", "", seq))
    FrameEncoder(depth).encode(canvas)  # the frame itself encodes at this depth
    return codes


def test_at_256_and_16_colours_each_heat_level_keeps_its_own_colour_code():
    """tmux's 256 colours (and 16): four heat levels over a grey or dark image are four codes."""
    for depth in ("256", "16"):
        for grey in (20, 60, 128, 200):
            codes = _heat_codes(depth, grey)
            assert len(set(codes)) == 4, (depth, grey, codes)
