"""Attention matrix view: what is on screen, scrolling, marks, hostile labels, cost."""
import types
import unicodedata

import numpy as np
import pyte
import pytest
import wcwidth

from vlmrl.instrument.events import AttentionMatrix
from vlmrl.utils.tui.frame import full_bytes
from vlmrl.utils.tui.layout import render_screen
from vlmrl.utils.tui.palette import palette_for
from vlmrl.utils.tui.panels import matrix
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.view import ViewState, handle_key

MONO = palette_for(False)


def state_with(m, tokens=None, types_=None, window=None, layer=2, head=None, pool=1):
    n_q, n_k = m.shape
    tokens = tokens if tokens is not None else [f"t{i}" for i in range(n_k)]
    store = Store(clock=lambda: 0.0, started_at=0.0)
    store.apply(AttentionMatrix(layer=layer, head=head, query_tokens=tokens[n_k - n_q:], key_tokens=tokens,
                                token_types=types_ or ["text"] * n_k, matrix=m, sliding_window=window, pool=pool))
    return store.snapshot()


def causal(n, seed=0):
    m = np.tril(np.random.default_rng(seed).random((n, n), dtype=np.float32))
    return m / m.sum(axis=1, keepdims=True)


def press(view, keys, state):
    for k in keys:
        view = handle_key(view, k, state)
    return view


def screen(state, view, w=80, h=24):
    return render_screen(state, view, w, h, 0.0, MONO).text().splitlines()


def test_values_labels_and_ramp_of_a_small_matrix():
    m = np.array([[1.0, 0, 0], [0.2, 0.8, 0], [0.1, 0.3, 0.6]], np.float32)
    st = state_with(m, tokens=["Ġcat", "Ġsat", "Ċ"], layer=4, head=1)
    v = press(ViewState(), ["m", "KEY_DOWN", "KEY_DOWN", "KEY_RIGHT"], st)
    lines = screen(st, v)
    assert "ATTENTION MATRIX" in lines[0]
    assert "layer 4 head 1" in "\n".join(lines)
    assert "[2,1] '\\n' -> 'sat' = 0.3000" in "\n".join(lines)
    rows = {ln.split()[1]: ln for ln in lines[6:9]}
    # scale "row": each value over its row's max, ramp at 0.25 steps; future keys blank
    cells = lambda ln: ln[matrix._geometry(80, 23)[0]:][:3]
    assert cells(rows["cat"]) == "█  "
    assert cells(rows["sat"]) == "▒█ "  # 0.2 / 0.8 = 0.25: the second level
    assert cells(rows["\\n"]) == "░▓█"
    # column labels run downwards above their column
    x0 = matrix._geometry(80, 23)[0]
    assert [lines[1][x0 + i] for i in range(3)] == ["c", "s", "\\"]
    v = handle_key(v, "n", st)  # absolute scale
    lines = screen(st, v)
    assert "scale abs" in "\n".join(lines)
    assert lines[8][x0:x0 + 3] == "░▒▓"  # 0.1 0.3 0.6


def test_special_image_tokens_and_sliding_window_are_marked():
    n = 12
    types_ = ["special"] + ["vision"] * 4 + ["text"] * 7
    st = state_with(causal(n), types_=types_, window=3)
    v = press(ViewState(), ["m", "KEY_END"], st)
    lines = screen(st, v)
    x0 = matrix._geometry(80, 23)[0]
    marks = lines[5][x0:x0 + n]
    assert marks == "◆▦▦▦▦       "
    last = next(ln for ln in lines if ln.split()[:1] == ["11"])
    # query 11 with window 3 sees keys 9..11; keys 0..8 are outside the window
    assert last[x0:x0 + n].startswith("·" * 9) and "·" not in last[x0 + 9:x0 + n]
    assert "◆special" in lines[-2] and "▦image" in lines[-2]


def test_scrolling_keeps_the_cursor_on_screen_and_clamps_at_the_ends():
    n = 500
    st = state_with(causal(n))
    v = press(ViewState(), ["m"], st)
    assert matrix.get_view(v) == matrix.MatrixView(0, 0)
    v = press(v, ["KEY_PGDOWN"] * 3 + ["KEY_DOWN"] * 2, st)
    assert matrix.get_view(v).row == 3 * matrix.DEFAULT_PAGE + 2
    v = press(v, [">"], st)
    assert matrix.get_view(v).col == 2 * matrix.DEFAULT_PAGE
    lines = screen(st, v)
    row = matrix.get_view(v).row
    shown = [int(ln.split()[0]) for ln in lines[6:-3] if ln.split() and ln.split()[0].isdigit()]
    assert row in shown and len(shown) == 24 - 1 - 6 - 2  # every cell row is used
    v = press(v, ["KEY_END"], st)
    assert matrix.get_view(v) == matrix.MatrixView(n - 1, n - 1)
    v = press(v, ["KEY_DOWN", "KEY_RIGHT", "KEY_PGDOWN"], st)
    assert matrix.get_view(v) == matrix.MatrixView(n - 1, n - 1)
    shown = [int(ln.split()[0]) for ln in screen(st, v)[6:-3] if ln.split() and ln.split()[0].isdigit()]
    assert shown[-1] == n - 1
    v = press(v, ["KEY_HOME", "KEY_UP", "KEY_LEFT", "KEY_PGUP", "<"], st)
    assert matrix.get_view(v) == matrix.MatrixView(0, 0)
    v = press(v, ["KEY_DOWN"] * 5 + ["d"], st)
    assert matrix.get_view(v) == matrix.MatrixView(5, 5)
    assert press(v, ["\x1b"], st).mode == "dashboard"


def test_no_matrix_says_how_to_get_one():
    st = Store().snapshot()
    text = "\n".join(screen(st, ViewState(mode="matrix")))
    assert "no attention matrix yet" in text and "matrix_layer" in text


@pytest.mark.parametrize("w,h", [(40, 10), (80, 24), (200, 60)])
def test_hostile_token_text_never_reaches_the_terminal(w, h):
    evil = ["\x1b[2J", "\x1b]52;c;aGk=\x07", "\u202eevil", "猫猫", "e\u0301", "\x9b31m", "a\nb", ""]
    n = len(evil)
    st = state_with(causal(n), tokens=evil, types_=["special"] + ["text"] * (n - 1))
    v = press(ViewState(), ["m", "KEY_END"], st)
    canvas = render_screen(st, v, w, h, 0.0, palette_for(True))
    data = full_bytes(canvas)
    body = data.replace(b"\x1b[", b"")  # our own CSI sequences
    assert b"\x1b]" not in data and b"\x07" not in data and b"\xc2\x9b" not in body
    scr = pyte.Screen(w, h)
    pyte.ByteStream(scr).feed(data)
    assert scr.display[0].startswith("━ ATTENTION MATRIX") or w < 40
    nfc = lambda lines: [unicodedata.normalize("NFC", ln) for ln in lines]  # noqa: E731
    assert nfc(scr.display) == nfc(canvas.text().splitlines())  # the layout survived the hostile text
    assert all(wcwidth.wcswidth(line) == w for line in scr.display)


def test_render_reads_only_the_visible_window():
    """A matrix whose cells outside the screen would raise if touched renders fine."""

    class Guarded(np.ndarray):
        limit = 64

        def __getitem__(self, idx):
            out = super().__getitem__(idx)
            if isinstance(out, np.ndarray) and out.size > self.limit * 4096:
                raise AssertionError(f"read {out.shape} cells")
            return out

    n = 4096
    big = np.zeros((n, n), np.float16).view(Guarded)
    ev = AttentionMatrix(matrix=big, query_tokens=[str(i) for i in range(n)], key_tokens=[str(i) for i in range(n)],
                         token_types=["text"] * n)
    st = types.SimpleNamespace(matrix=ev, meta={}, matrix_v=1)
    view = ViewState(mode="matrix", mode_state={"matrix": matrix.MatrixView(2000, 3000)})
    c = matrix.render(st, view, 160, 50, 0.0, MONO)
    assert "[2000,3000]" in c.text()
