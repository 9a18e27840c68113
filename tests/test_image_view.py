"""The image view (key v) on a real recorded tiny run (tests/data/tiny_colors_image_seed0.jsonl):
what a terminal shows (pyte) is the log's image and attention, read here straight from
the JSON lines; under NO_COLOR no colour code is sent; at 256 and 16 colours only codes of
that depth; keys pick layer, token, overlay and image page; two images lie side by side
or are paged; bad image events are rejected and named."""
from __future__ import annotations

import base64
import os
import re

import numpy as np
import pyte
import pytest

from conftest import raw_lines, store_of
from vlmrl.instrument.events import ImageAttention, ImageState
from vlmrl.utils.tui import image_math, layout
from vlmrl.utils.tui.frame import FrameEncoder
from vlmrl.utils.tui.palette import COLOR, MONO
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.view import ViewState, handle_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "tests", "data", "tiny_colors_image_seed0.jsonl")
SIZES = [(80, 24), (120, 40), (200, 60), (240, 70)]
T = 1000.0
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def _array(spec):
    """An array of a JSON line, decoded here (the oracle does not go through the event codec)."""
    dtype = np.dtype(spec["nd"]).newbyteorder("<")
    flat = np.frombuffer(base64.b64decode(spec["b64"]), dtype) if "b64" in spec else np.asarray(spec["v"], dtype)
    return flat.reshape(spec["shape"])


def _colour_params(data: str) -> list:
    """Every SGR parameter that sets a colour (30-38, 40-48, 90-97, 100-107) in a byte stream."""
    out = []
    for seq in SGR.findall(data):
        ps = [int(p) for p in seq.split(";") if p]
        i = 0
        while i < len(ps):
            p = ps[i]
            if p in (38, 48):
                out.append(tuple(ps[i:i + (5 if ps[i + 1] == 2 else 3)]))
                i += 5 if ps[i + 1] == 2 else 3
                continue
            if 30 <= p <= 37 or 40 <= p <= 47 or 90 <= p <= 97 or 100 <= p <= 107:
                out.append((p,))
            i += 1
    return out


def _logged():
    """The newest generation's image and attention, decoded here from the JSON lines."""
    recs = raw_lines(RUN)
    gen = max(r["generation"] for r in recs if r["kind"] == "image_attention")
    img = next(r for r in recs if r["kind"] == "image" and r["generation"] == gen)
    steps = sorted((r for r in recs if r["kind"] == "image_attention" and r["generation"] == gen),
                   key=lambda r: r["step"])
    return img, steps, recs


def _screen(state, view, size, theme=COLOR, depth="truecolor"):
    canvas = layout.render_screen(state, view, size[0], size[1], T, theme)
    data = FrameEncoder(depth).encode(canvas)
    screen = pyte.Screen(*size)
    pyte.ByteStream(screen).feed(data.encode() if isinstance(data, str) else data)
    assert screen.display == [canvas.row_text(y) for y in range(size[1])]
    return screen, data if isinstance(data, str) else data.decode()


def _open(key_presses=(), state=None):
    view = handle_key(ViewState(), "v", state)
    for k in key_presses:
        view = handle_key(view, k, state)
    return view


@pytest.fixture(scope="module")
def state():
    return store_of(RUN).snapshot()


@pytest.mark.parametrize("size", SIZES)
def test_the_view_shows_the_logged_token_share_and_patch_weights(state, size):
    img, steps, _ = _logged()
    for keys, att in (((), steps[-1]), (("KEY_UP",), steps[0])):
        screen, _ = _screen(state, _open(keys, state), size)
        text = "\n".join(screen.display)
        weights = _array(att["attention"]).astype(np.float64)  # [L, N]
        share = _array(att["image_share"]).astype(np.float64)
        assert f"gen {att['generation']}" in text and f"step {att['step']}" in text
        assert repr(att["token_text"]) in text
        for i, v in enumerate(share):  # per layer, then all layers
            assert f"L{i} {v:.3f}" in text
        assert f"all {share.mean():.3f}" in text
        grid = weights.mean(axis=0).reshape(img["grid"][1:])  # all layers, as the patches lie
        for row in grid:
            assert " ".join(f"{v:.4f}" for v in row) in text
        assert f"0 … {grid.max():.4f}" in text


def test_layer_keys_show_one_layers_weights(state):
    img, steps, _ = _logged()
    weights = _array(steps[-1]["attention"]).astype(np.float64)
    view = _open(["]"], state)  # all layers -> layer 0
    text = "\n".join(_screen(state, view, (120, 40))[0].display)
    assert "layer 0" in text and " ".join(f"{v:.4f}" for v in weights[0][:2]) in text
    view = handle_key(view, "]", state)
    text = "\n".join(_screen(state, view, (120, 40))[0].display)
    assert "layer 1" in text and " ".join(f"{v:.4f}" for v in weights[1][:2]) in text
    view = handle_key(view, "]", state)  # past the last layer: all layers again
    assert "all layers (mean)" in "\n".join(_screen(state, view, (120, 40))[0].display)
    assert get_iv(handle_key(view, "a", state)).layer is None


def get_iv(view):
    from vlmrl.utils.tui.panels.image import get_view
    return get_view(view)


def test_without_overlay_the_cells_are_the_logged_pixels_two_per_cell(state):
    img, _, _ = _logged()
    pixels = _array(img["pixels"])
    screen, _ = _screen(state, _open(["o"], state), (120, 40))
    # the image starts at column 1 on the row below its caption
    y0 = next(y for y, line in enumerate(screen.display) if "merged grid" in line) + 1
    cells = [(x, y) for y in range(y0, 40) for x in range(1, 120) if screen.buffer[y][x].data == "▀"]
    assert cells, "no half-block cells on screen"
    h = max(y for _, y in cells) - y0 + 1
    w = max(x for x, _ in cells)
    # each screen pixel shows the image pixel its centre falls on (nearest), 2 per cell
    ys = np.minimum(((np.arange(2 * h) + 0.5) * pixels.shape[0] / (2 * h)).astype(int), pixels.shape[0] - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * pixels.shape[1] / w).astype(int), pixels.shape[1] - 1)
    want = pixels[ys][:, xs]
    for x, y in cells[:: max(1, len(cells) // 200)]:
        cell = screen.buffer[y][x]
        up, down = want[2 * (y - y0), x - 1], want[2 * (y - y0) + 1, x - 1]
        assert cell.fg == "%02x%02x%02x" % tuple(up) and cell.bg == "%02x%02x%02x" % tuple(down)


def test_no_color_sends_no_colour_code_and_draws_glyph_ramps(state):
    for keys in ((), ("o",), ("KEY_UP", "]")):
        for size in SIZES:
            screen, data = _screen(state, _open(keys, state), size, MONO, "none")
            assert _colour_params(data) == [], _colour_params(data)[:5]
            body = "".join(screen.display)
            assert "▀" not in body
            if "o" in keys:
                assert set(image_math.GREY_RAMP[1:]) & set(body)
            else:
                assert set("░▒▓█") & set(body)


@pytest.mark.parametrize("depth, allowed", [("256", lambda p: p[:2] in ((38, 5), (48, 5))),
                                            ("16", lambda p: len(p) == 1)])
def test_lower_depths_send_only_their_own_colour_codes(state, depth, allowed):
    _, data = _screen(state, _open((), state), (120, 40), COLOR, depth)
    params = _colour_params(data)
    assert params and all(allowed(p) for p in params)


def _two_images_state(grids=((1, 2, 3), (1, 2, 2))):
    s = Store(clock=lambda: T, started_at=0.0)
    rng = np.random.default_rng(0)
    n = sum(int(np.prod(g)) for g in grids)
    for i, g in enumerate(grids):
        s.apply(ImageState(generation=3, index=i, count=len(grids), grid=g, size=(32 * g[1], 32 * g[2]),
                           pixels=rng.integers(0, 256, (32 * g[1], 32 * g[2], 3)).astype(np.uint8)))
    s.apply(ImageAttention(generation=3, step=0, token_text="red", tokens=n,
                           attention=(np.arange(2 * n).reshape(2, n) / (4 * n)).astype(np.float16),
                           image_share=np.array([0.5, 0.25], np.float32)))
    return s


def test_two_images_side_by_side_when_wide_and_paged_when_not():
    state = _two_images_state().snapshot()
    text = "\n".join(_screen(state, _open((), state), (120, 40))[0].display)
    assert "image 1/2" in text and "image 2/2" in text
    narrow = _two_images_state(((1, 2, 3), (1, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2))).snapshot()
    text = "\n".join(_screen(narrow, _open((), narrow), (80, 24))[0].display)
    assert "image 1/5" in text and "image 5/5" not in text and "of 5 (n)" in text
    text = "\n".join(_screen(narrow, _open(("n",), narrow), (80, 24))[0].display)
    assert "image 1/5" not in text and ("image 4/5" in text or "image 5/5" in text)


def test_inconsistent_or_stale_image_events_are_rejected_and_counted():
    s = _two_images_state()
    s.apply(ImageAttention(generation=3, step=1, tokens=2, attention=np.zeros((2, 10), np.float16),
                           image_share=np.zeros(2, np.float32)))
    s.apply(ImageAttention(generation=3, step=2, tokens=10, attention=np.zeros((2, 10), np.float16),
                           image_share=np.zeros(3, np.float32)))
    s.apply({"kind": "image", "generation": 4, "pixels": {"nd": "uint8", "shape": [500, 500, 3], "b64": ""}})
    s.apply(ImageState(generation=2, index=0, count=1, grid=(1, 1, 1), size=(8, 8), pixels=np.zeros((8, 8, 3), np.uint8)))
    snap = s.snapshot()
    assert len(snap.problems) >= 3 and [a.step for a in snap.images.steps] == [0]
    assert snap.images.generation == 3 and snap.images.stale == 1


def test_before_any_image_the_view_says_so():
    state = Store(clock=lambda: T, started_at=0.0).snapshot()
    text = "\n".join(_screen(state, _open((), state), (80, 24))[0].display)
    assert "no image yet" in text


def test_cells_not_sent_are_said_and_not_spread_over_the_other_image():
    s = Store(clock=lambda: T, started_at=0.0)
    for i, g in enumerate(((1, 2, 2), (1, 2, 2))):
        s.apply(ImageState(generation=1, index=i, count=2, grid=g, size=(64, 64), pixels=np.zeros((64, 64, 3), np.uint8)))
    s.apply(ImageAttention(generation=1, step=0, tokens=8, attention=np.full((2, 4), 0.125, np.float16),
                           image_share=np.array([0.5, 0.5], np.float32)))
    state = s.snapshot()
    screen, _ = _screen(state, _open((), state), (120, 40))
    text = "\n".join(screen.display)
    assert "image 2/2 · no heat (not sent)" in text and "image 1/2 · merged grid 1×2×2" in text
    assert text.count("0.1250 0.1250") == 2  # the first image's 2x2 weights; the second has none


def test_a_new_generations_image_waits_for_its_first_step_before_it_replaces_the_shown_one():
    s = _two_images_state()
    s.apply(ImageState(generation=4, index=0, count=1, grid=(1, 1, 1), size=(32, 32), pixels=np.zeros((8, 8, 3), np.uint8)))
    snap = s.snapshot().images
    assert snap.generation == 3 and len(snap.images) == 2 and [a.step for a in snap.steps] == [0]
    s.apply(ImageAttention(generation=4, step=1, tokens=1, attention=np.ones((2, 1), np.float16),
                           image_share=np.ones(2, np.float32)))
    snap = s.snapshot().images
    assert snap.generation == 4 and len(snap.images) == 1 and [a.step for a in snap.steps] == [1]


def test_with_a_render_cache_new_steps_show_at_most_once_per_heat_tick():
    from vlmrl.utils.tui.panels import image as panel
    from vlmrl.utils.tui.render_cache import RenderCache
    from vlmrl.utils.tui.state import HEAT_HZ

    s, cache = _two_images_state(), RenderCache()
    view = _open((), s.snapshot())
    first = panel.render(s.snapshot(), view, 120, 39, 10.0, COLOR, cache)
    s.apply(ImageAttention(generation=3, step=1, token_text="blue", tokens=10, attention=np.ones((2, 10), np.float16) / 10,
                           image_share=np.ones(2, np.float32)))
    held = panel.render(s.snapshot(), view, 120, 39, 10.0 + 0.2 / HEAT_HZ, COLOR, cache)
    assert held is first  # same tick: the screen drawn for it stays
    later = panel.render(s.snapshot(), view, 120, 39, 10.0 + 1.0 / HEAT_HZ, COLOR, cache)
    assert "'blue' step 1" in later.row_text(0) and "'blue'" not in first.row_text(0)
    assert panel.render(s.snapshot(), view, 120, 39, 99.0, COLOR, cache) is later  # nothing new: kept


def test_pooled_cells_lie_over_the_patches_they_sum():
    s = Store(clock=lambda: T, started_at=0.0)
    s.apply(ImageState(generation=1, index=0, count=1, grid=(1, 4, 4), size=(128, 128),
                       pixels=np.zeros((96, 96, 3), np.uint8)))
    s.apply(ImageAttention(generation=1, step=0, tokens=16, pool=2, attention=np.array([[0.1, 0.2, 0.3, 0.4]] * 2, np.float16),
                           image_share=np.array([1.0, 1.0], np.float32)))
    state = s.snapshot()
    screen, _ = _screen(state, _open(("o", "o"), state), (120, 40), MONO, "none")
    text = "\n".join(screen.display)
    assert "heat per 2×2 patches" in text and "0.1000 0.2000" in text and "0.3000 0.3999" in text
    # the ░▒▓█ picture: its left half top is the 0.1 cell (level 0.25 -> ▒), its right half bottom the max (█)
    rows = [line for line in screen.display if "█" in line or "▒" in line]
    heat = [line[line.index("▒"):] for line in rows if "▒" in line]
    assert heat and heat[0].lstrip()[0] == "▒" and "█" in rows[-1]
