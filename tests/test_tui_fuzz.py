"""Hostile token text (C0/C1 controls, CSI, OSC 52, bidi, wide and combining characters)
never reaches the terminal as an escape sequence and never moves the layout."""
from __future__ import annotations

import dataclasses
import re
import unicodedata

import pyte
import wcwidth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlmrl.instrument.events import AttentionMatrix, CreditState, DecodeState
from vlmrl.utils.tui import layout, theme
from vlmrl.utils.tui.frame import FrameEncoder
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.synthetic import SyntheticRun
from vlmrl.utils.tui.view import ViewState

DANGER = ["\x1b[2J", "\x1b]52;c;aGVsbG8=\x07", "\x1b]0;pwned\x1b\\", "\x9b31m", "\x9d8;;http://x\x9c", "\x1bP+q\x1b\\",
          "\u202e", "\u2066", "\u200f", "\x00", "\r\n", "\x08", "\x07", "\x7f", "\t", "中文", "🙂", "e\u0301",
          "\u0300", "\u200d", "👨\u200d👩\u200d👧", "\ufeff", "\U000e0001", "\ud7ff", "Ａ"]
piece = st.one_of(st.sampled_from(DANGER), st.text(max_size=4))
hostile = st.lists(piece, min_size=1, max_size=6).map("".join)

# What our encoder itself emits: CSI sequences with numeric/private parameters only.
OUR_CSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
BASE = SyntheticRun(num_layers=8, num_heads=6, batch=1, gen_tokens=6, seed=5).take(16)
# Panels that never show token text: the fuzz must leave their cells exactly as they were.
# (The flow panel names the sampled token, so it is checked by 1, 2 and 4 like the others.)
CLEAN = ("header", "attention", "kv", "mrope", "vision", "footer")


def _hostile_events(texts):
    out, k = [], 0
    for ev in BASE:
        t = texts[k % len(texts)]
        k += 1
        if isinstance(ev, DecodeState):
            ev = dataclasses.replace(ev, token_text=t, top_k=[(1, t, 0.5), (2, t[::-1], 0.25)])
        elif isinstance(ev, CreditState):
            ev = dataclasses.replace(ev, tokens=[t] * len(ev.tokens))
        elif isinstance(ev, AttentionMatrix):
            ev = dataclasses.replace(ev, query_tokens=[t] * len(ev.query_tokens), key_tokens=[t] * len(ev.key_tokens))
        out.append(ev)
    return out


def _screen(events, w, h, mode="dashboard"):
    store = Store(clock=lambda: 0.0, started_at=0.0)
    for ev in events:
        store.apply(ev)
    canvas = layout.render_screen(store.snapshot(), ViewState(mode=mode), w, h, 1.0, theme.palette_for_depth("256"))
    return canvas, FrameEncoder("256").encode(canvas)


def base_text(rows):
    """Rows without combining marks: emulators differ on where a mark after a wide char
    goes (pyte puts it on the wide char's empty right half and then never shows it)."""
    return ["".join(ch for ch in unicodedata.normalize("NFD", r) if not unicodedata.combining(ch)) for r in rows]


def _pyte_safe(text: str) -> bool:
    # pyte stops drawing at a zero-width non-combining character (emulator quirk)
    return all(not (wcwidth.wcwidth(ch) == 0 and not unicodedata.combining(ch)) for ch in text)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile, min_size=1, max_size=4), st.sampled_from([(80, 24), (120, 40)]),
       st.sampled_from(["dashboard", "dashboard", "matrix", "explorer"]))
def test_hostile_text_cannot_escape_or_move_layout(texts, size, mode):
    w, h = size
    canvas, data = _screen(_hostile_events(texts), w, h, mode)
    # 1. after removing our own CSI sequences, no escape or control byte is left
    rest = OUR_CSI.sub(b"", data)
    assert b"\x1b" not in rest
    decoded = rest.decode("utf-8")
    assert not any(unicodedata.category(ch) == "Cc" for ch in decoded)
    assert not any(ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069" for ch in decoded)
    # 2. every canvas row is exactly the screen width
    for row in canvas.chars:
        assert sum(wcwidth.wcwidth(c[0]) if c else 0 for c in row) == w
    if mode != "dashboard":
        return
    # 3. panels without token text are cell-for-cell what benign text gives
    benign, _ = _screen(BASE, w, h)
    for name, rect in layout.plan(w, h, 8, 6):
        if name in CLEAN:
            for y in range(rect.y, rect.bottom):
                assert canvas.chars[y][rect.x:rect.right] == benign.chars[y][rect.x:rect.right], (name, y)
    # 4. the emulator shows exactly the canvas (where the emulator can draw the text)
    if all(_pyte_safe("".join(r)) for r in canvas.chars):
        screen = pyte.Screen(w, h)
        pyte.ByteStream(screen).feed(data)
        assert base_text(screen.display) == base_text("".join(r) for r in canvas.chars)
        assert screen.title == "" and screen.icon_name == ""  # no OSC title got through
