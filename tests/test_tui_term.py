"""Keys, colour depth detection and colour lowering (no terminal needed)."""
from __future__ import annotations

import pytest

from vlmrl.utils.tui import theme
from vlmrl.utils.tui.canvas import Style
from vlmrl.utils.tui.term import parse_keys


def test_parse_keys_plain_special_and_unknown():
    assert parse_keys("qp[]sb?") == list("qp[]sb?")
    assert parse_keys("\x1b[D\x1b[C\x1b[H\x1b[F\x1b[5~\x1b[6~") == [
        "KEY_LEFT", "KEY_RIGHT", "KEY_HOME", "KEY_END", "KEY_PGUP", "KEY_PGDOWN"]
    assert parse_keys("\x1bOA\x1b[1;5B") == ["KEY_UP", "KEY_DOWN"]
    assert parse_keys("\x1b") == ["KEY_ESCAPE"]
    assert parse_keys("\x1b[99~x") == ["x"]  # unknown sequence dropped, the rest kept
    assert parse_keys("\r \x7f") == ["KEY_ENTER", " ", "KEY_BACKSPACE"]
    assert parse_keys("\x00\x03é\x0c") == ["é", "KEY_REDRAW"]  # controls are never keys; Ctrl-L redraws


@pytest.mark.parametrize("env,colors,expect", [
    ({"NO_COLOR": "1", "COLORTERM": "truecolor", "TERM": "xterm-256color"}, 256, "none"),
    ({"NO_COLOR": "", "TERM": "xterm-256color"}, 256, "256"),  # empty NO_COLOR does not count
    ({"TERM": "dumb", "COLORTERM": "truecolor"}, None, "none"),
    ({"TERM": "xterm", "COLORTERM": "truecolor"}, 8, "truecolor"),
    ({"TERM": "xterm", "COLORTERM": "24bit"}, 8, "truecolor"),
    ({"TERM": "xterm-256color"}, 256, "256"),
    ({"TERM": "xterm"}, 8, "16"),
    ({"TERM": "vt100"}, None, "16"),  # terminfo cannot tell: 16 colours
    ({"TERM": "my-256color"}, None, "256"),  # ... unless the name says 256
    ({"TERM": "weird"}, 2, "none"),
    ({}, None, "16"),
])
def test_detect_color_depth(env, colors, expect):
    assert theme.detect_color_depth(env, terminfo=lambda term: colors) == expect


def test_detect_color_depth_with_real_terminfo():
    assert theme.detect_color_depth({"TERM": "xterm-256color"}) == "256"


def test_rgb_lowering():
    assert theme.rgb_to_256((255, 0, 0)) == 196
    assert theme.rgb_to_256((0, 0, 0)) == 16
    assert theme.rgb_to_256((128, 128, 128)) == 244  # grey ramp beats the cube here
    assert theme.rgb_to_256((95, 135, 175)) == 16 + 36 * 1 + 6 * 2 + 3
    assert theme.rgb_to_16((250, 10, 10)) == 9
    assert theme.rgb_to_16((0, 0, 0)) == 0
    assert theme.rgb_to_16((200, 200, 0)) == 3


def test_sgr_by_depth():
    s = Style(fg=(255, 0, 0), bg=(0, 0, 0), bold=True, reverse=True)
    assert theme.sgr(s, "truecolor") == "\x1b[0;1;7;38;2;255;0;0;48;2;0;0;0m"
    assert theme.sgr(s, "256") == "\x1b[0;1;7;38;5;196;48;5;16m"
    assert theme.sgr(s, "16") == "\x1b[0;1;7;91;40m"
    assert theme.sgr(s, "none") == "\x1b[0;1;7m"
    with pytest.raises(ValueError, match="colour depth"):
        theme.sgr(s, "12bit")


def test_palette_follows_depth():
    assert theme.palette_for_depth("none").color is False
    assert theme.palette_for_depth("16").color is True
