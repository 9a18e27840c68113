"""The cell grid keeps every row exactly its width and lets no control character in."""
import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

from vlmrl.utils.tui.canvas import Canvas, Rect, char_width, sanitize, text_width, truncate

HOSTILE = ["\x1b[2J", "\x1b]52;c;ZXZpbA==\x07", "\x9b31m", "\u202eevil", "漢字", "e\u0301", "👩‍👩‍👧", "\x00\x7f"]


def row_cells(canvas, y):
    """Cells the row occupies on a terminal: wide chars take two, '' marks their right half."""
    return sum(char_width(c[:1]) if c else 0 for c in canvas.chars[y])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 25), st.integers(-1, 4),
                          st.one_of(st.text(max_size=12), st.sampled_from(HOSTILE))), max_size=12))
def test_rows_keep_their_width_and_hold_no_control_characters(puts):
    c = Canvas(20, 4)
    for x, y, text in puts:
        c.put(x, y, text)
    for y in range(c.height):
        assert len(c.chars[y]) == 20
        assert row_cells(c, y) == 20
        for i, cell in enumerate(c.chars[y]):
            assert not any(unicodedata.category(ch) == "Cc" for ch in cell)
            if cell == "":  # a right half always follows a wide left half
                assert i > 0 and char_width(c.chars[y][i - 1][:1]) == 2


def test_wide_char_cut_by_the_left_edge_leaves_a_blank_not_half_a_glyph():
    c = Canvas(6, 1)
    c.put(0, 0, "文字")
    c.put(-1, 0, "中")
    assert c.chars[0][:4] == [" ", " ", "字", ""]


def test_escape_sequences_become_visible_text():
    assert "\x1b" not in sanitize("\x1b[2J") and sanitize("\x1b[2J").startswith("\u241b")
    assert sanitize("\u202eabc") == "\ufffdabc"
    assert text_width("漢字") == 4
    assert truncate("abcdef", 4) == "abc…"


def test_fill_and_blit_clip_to_the_canvas():
    c = Canvas(5, 3)
    c.fill(Rect(3, 1, 10, 10), "#")
    assert c.text().splitlines() == ["     ", "   ##", "   ##"]
    small = Canvas(3, 1)
    small.put(0, 0, "xyz")
    c.blit(small, 4, 0)
    assert c.row_text(0) == "    x"


@pytest.mark.parametrize("text, width, want", [
    ("sampling", 5, "samp…"),           # cut inside a word: marked
    ("step 165 · phase", 9, "step 165…"),  # the next word lost: marked too
    ("ab  cd", 3, "ab "),               # cut inside a run of spaces: nothing lost there
    ("fits", 4, "fits"),                 # not cut: no mark
    ("日本語テキスト", 5, "日本…"),         # a wide char that does not fit: the mark takes its free cell
    ("日本語テキスト", 4, "日… "),          # no free cell: the mark replaces a whole wide char
])
def test_text_cut_on_the_right_ends_in_an_ellipsis(text, width, want):
    from vlmrl.utils.tui.panels.common import put as fast_put
    from vlmrl.utils.tui.palette import COLOR

    for write in (lambda c: c.put(0, 0, text), lambda c: fast_put(c, 0, 0, text, COLOR.plain)):
        c = Canvas(width, 1)
        write(c)
        assert c.row_text(0) == want
    c = Canvas(20, 1)
    c.put(2, 0, text, max_width=width)
    assert c.row_text(0)[2:2 + len(want)] == want
