"""The frame encoder, checked by a terminal emulator (pyte) reading its real bytes.

Property: feeding the stream of diffs for any sequence of frames (with resizes) leaves
the emulator showing exactly what a fresh full repaint of the last frame shows, text and
attributes, and what the canvas holds.
"""
from __future__ import annotations

import unicodedata

import pyte
import wcwidth
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlmrl.utils.tui import theme
from vlmrl.utils.tui.canvas import Canvas, Rect, Style
from vlmrl.utils.tui.frame import BSU, ESU, FrameEncoder, full_bytes

from conftest import base_text, cells

# No ZWJ: pyte stops drawing a string at any zero-width non-combining character (a
# quirk of the emulator, not of terminals); the canvas drops ZWJ anyway (see canvas.py).
TEXTS = ["hello", "中文字", "e\u0301x", "░▒▓█", "\x1b[2Jbad", "a", "🙂ok", "x\u0300y", "｜｜", "\u202eevil",
         "tab\there", " ", "ÿ\x9b31m"]
def _pyte_safe(ch: str) -> bool:
    return not (wcwidth.wcwidth(ch) == 0 and not unicodedata.combining(ch))


COLORS = [None, (255, 0, 0), (0, 128, 255), (30, 30, 30), (250, 250, 250), (90, 200, 90)]


def feed(screen: pyte.Screen, data: bytes) -> None:
    pyte.ByteStream(screen).feed(data)


def well_formed(canvas: Canvas) -> bool:
    """Every wide char is followed by its "" right half (canvas.put can break this when a
    wide char is clipped at the left edge)."""
    for row in canvas.chars:
        for x, c in enumerate(row):
            wide = bool(c) and wcwidth.wcwidth(c[0]) == 2
            if wide != (x + 1 < len(row) and row[x + 1] == ""):
                return False
    return True


def fresh_screen(canvas: Canvas, depth: str) -> pyte.Screen:
    s = pyte.Screen(canvas.width, canvas.height)
    feed(s, full_bytes(canvas, depth))
    return s


def canvas_rows(canvas: Canvas):
    # pyte stores a base char plus combining marks in NFC form
    return [unicodedata.normalize("NFC", "".join(r)) for r in canvas.chars]


styles = st.builds(Style, fg=st.sampled_from(COLORS), bg=st.sampled_from(COLORS), bold=st.booleans(),
                   reverse=st.booleans(), underline=st.booleans())
op = st.one_of(
    st.tuples(st.just("put"), st.integers(-3, 90), st.integers(0, 30), st.sampled_from(TEXTS)
              | st.text(st.characters().filter(_pyte_safe), max_size=12), styles),
    st.tuples(st.just("fill"), st.integers(0, 80), st.integers(0, 30), st.integers(1, 12), styles),
)
frame_ops = st.lists(op, max_size=8)
sizes = st.sampled_from([(20, 6), (41, 9), (80, 24), (13, 3)])


def apply_ops(canvas: Canvas, ops) -> Canvas:
    c = canvas.copy()
    for o in ops:
        if o[0] == "put":
            _, x, y, text, style = o
            c.put(x % (c.width + 3) - 3, y % max(c.height, 1), text, style)
        else:
            _, x, y, w, style = o
            c.fill(Rect(x % max(c.width, 1), y % max(c.height, 1), w, 2), "#", style)
    return c


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), sizes, frame_ops), min_size=1, max_size=10),
       st.sampled_from(theme.DEPTHS))
def test_diff_stream_equals_fresh_full_render(frames, depth):
    enc = FrameEncoder(depth)
    w, h = 40, 10
    canvas = Canvas(w, h)
    screen = pyte.Screen(w, h)
    for resize, size, ops in frames:
        if resize and size != (w, h):
            w, h = size
            screen.resize(h, w)
            canvas = Canvas(w, h)
        canvas = apply_ops(canvas, ops)
        feed(screen, enc.encode(canvas))
        expect = fresh_screen(canvas, depth)
        assert screen.display == expect.display
        assert cells(screen) == cells(expect)
        if well_formed(canvas):  # else the encoder draws broken wide pairs as spaces (tested below)
            assert base_text(screen.display) == base_text(canvas_rows(canvas))


def test_first_frame_clears_once_then_only_changes_are_written():
    enc = FrameEncoder("256")
    a = Canvas(30, 5)
    a.put(0, 0, "title", Style(bold=True))
    first = enc.encode(a)
    assert first.startswith(BSU.encode()) and first.endswith(ESU.encode())
    assert b"\x1b[2J" in first and b"?7l" in first
    b = a.copy()
    b.put(3, 2, "new", Style(fg=(255, 0, 0)))
    screen = pyte.Screen(30, 5)
    feed(screen, first)
    screen.dirty.clear()
    second = enc.encode(b)
    assert b"\x1b[2J" not in second and b"\x1b[H" not in second
    feed(screen, second)
    assert screen.dirty == {2}  # only the changed row was touched
    assert b"new" in second and b"title" not in second
    assert enc.encode(b.copy()) == b""  # nothing changed: nothing to write


def test_resize_repaints_fully_with_one_clear():
    enc = FrameEncoder("none")
    enc.encode(Canvas(10, 3))
    c = Canvas(12, 4)
    c.put(0, 3, "bottom-row!!")
    out = enc.encode(c)
    assert out.count(b"\x1b[2J") == 1
    s = pyte.Screen(12, 4)
    feed(s, out)
    assert s.display[3] == "bottom-row!!"  # last cell of the last row: autowrap off, no scroll


def test_wide_char_change_rewrites_both_cells():
    enc = FrameEncoder("256")
    a = Canvas(10, 1)
    a.put(0, 0, "ab中cd")
    screen = pyte.Screen(10, 1)
    feed(screen, enc.encode(a))
    b = a.copy()
    b.put(3, 0, "x")  # lands on the right half of 中: its left half must become blank
    feed(screen, enc.encode(b))
    assert screen.display == canvas_rows(b) == ["ab xcd    "]
    c = b.copy()
    c.put(2, 0, "文")
    feed(screen, enc.encode(c))
    assert screen.display == canvas_rows(c)


def test_malformed_cells_never_shift_the_row_or_leak_controls():
    enc = FrameEncoder("truecolor")
    c = Canvas(8, 1)
    c.chars[0][:] = ["\x1b", "中", "x", "", "e\u0301", "\u0301", "\x9b", "z"]  # direct writes skip put()
    out = enc.encode(c)
    body = out.replace(b"\x1b[", b"")
    assert b"\x1b" not in body and "\x9b".encode() not in out
    s = pyte.Screen(8, 1)
    feed(s, out)
    assert s.cursor.x == 8 or len(s.display[0]) == 8
    assert s.display[0][7] == "z"  # every cell stayed in its column


@pytest.mark.parametrize("depth,needle,absent", [
    ("truecolor", b"38;2;255;0;0", b"38;5;"),
    ("256", b"38;5;196", b"38;2;"),
    ("16", b";91", b"38;"),
    ("none", b"\x1b[1;1H", b"38;"),
])
def test_colour_depth_lowering(depth, needle, absent):
    c = Canvas(4, 2)
    c.put(0, 0, "hot", Style(fg=(255, 0, 0), bold=True))
    out = full_bytes(c, depth)
    assert needle in out and absent not in out
    if depth == "none":
        assert b"\x1b[0;1m" in out  # bold survives NO_COLOR; colour does not


def test_steady_state_is_small_against_full_repaint():
    a = Canvas(160, 50)
    for y in range(50):
        a.put(0, y, ("row %d " % y) * 20, Style(fg=(y * 5, 100, 200)))
    enc = FrameEncoder("256")
    full = len(enc.encode(a))
    b = a.copy()
    b.put(10, 7, "12.34", Style(fg=(255, 255, 0)))
    b.put(70, 30, "▓▓░", Style(fg=(255, 0, 0)))
    assert len(enc.encode(b)) < 0.02 * full


def test_repaint_heals_stray_output_without_clearing():
    enc = FrameEncoder("256")
    c = Canvas(20, 3)
    c.put(0, 1, "dashboard", Style(bold=True))
    screen = pyte.Screen(20, 3)
    feed(screen, enc.encode(c))
    feed(screen, b"\x1b[2;1HWARNING: stray")  # someone else wrote to the terminal
    assert enc.encode(c.copy()) == b""  # a diff cannot know
    enc.repaint()
    out = enc.encode(c.copy())
    assert b"\x1b[2J" not in out
    feed(screen, out)
    assert screen.display == canvas_rows(c)


def test_damage_from_a_frame_that_was_not_sent_is_ignored():
    """Canvas.damage only narrows the diff when its base is the frame on screen; a stale
    hint (built from a screen the encoder never sent) must not hide a change."""
    enc = FrameEncoder(theme.NOCOLOR)
    a = Canvas(20, 3)
    a.put(0, 0, "first", Style())
    screen = pyte.Screen(20, 3)
    feed(screen, enc.encode(a))
    unsent = a.copy()
    b = a.copy()
    b.put(0, 2, "changed", Style())
    b.damage = (unsent, {})  # claims nothing changed, relative to a screen never sent
    feed(screen, enc.encode(b))
    assert screen.display[2].startswith("changed")
    c = b.copy()
    c.put(0, 1, "spanned", Style())
    c.damage = (b, {1: [(0, 20)]})  # a true hint relative to the frame on screen
    feed(screen, enc.encode(c))
    assert screen.display[1].startswith("spanned") and screen.display[2].startswith("changed")
