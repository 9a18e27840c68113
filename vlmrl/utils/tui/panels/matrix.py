"""Attention matrix view (key m): token x token attention of the AttentionMatrix event.

Only the cells on screen are read and drawn, so a 4096 x 4096 matrix costs what a 64 x 64
one does. A cursor picks one cell; its value and its query/key tokens are shown in full on
the status line, and the viewport keeps the cursor centred (pure: no scroll state to drift).

Cells use the ░▒▓█ ramp at 0.25 steps of the scaled value; scale `row` divides by the
row's largest visible-or-not weight (softmax rows are mostly tiny, so the raw value would be
░ nearly everywhere), `abs` is the weight itself, `log` maps 1e-4..1 onto 0..1.
Marks: ◆ special token, ▦ image token (row and column gutters); a blank cell is a future key
(causal mask) and `·` a key outside the sliding window.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Optional

import numpy as np

from vlmrl.utils.tui.canvas import Canvas, Style, char_width, sanitize, text_memo, truncate
from vlmrl.utils.tui.explorer_math import clean_label
from vlmrl.utils.tui.palette import RAMP
from vlmrl.utils.tui.panels.common import message, put_glyphs, title_rule
from vlmrl.utils.tui.render_cache import RenderCache

SCALES = ("row", "abs", "log")
LABEL_W = 14  # row gutter: index + token label
COL_LABEL_ROWS = 4  # column token labels are written top to bottom, this many characters
TYPE_MARK = MappingProxyType({"special": "◆", "vision": "▦", "text": " "})
DEFAULT_PAGE = 20  # rows per PgUp/PgDn when the screen size is not known to key handling
OUTSIDE = "·"


@dataclasses.dataclass(frozen=True)
class MatrixView:
    row: int = 0  # cursor: query index
    col: int = 0  # cursor: key index
    scale: str = "row"


def get_view(view) -> MatrixView:
    st = getattr(view, "mode_state", None) or {}
    mv = st.get("matrix")
    return mv if isinstance(mv, MatrixView) else MatrixView()


def _with(view, mv: MatrixView):
    st = dict(getattr(view, "mode_state", None) or {})
    st["matrix"] = mv
    return view.replace(mode_state=st)


def _geometry(width: int, height: int):
    """(x0, y0, cols, rows) of the cell area inside a width x height screen."""
    label_w = min(LABEL_W, max(width // 4, 4))
    x0 = label_w + 1  # + the type gutter
    y0 = 1 + COL_LABEL_ROWS + 1  # title, vertical labels, type gutter
    rows = max(height - y0 - 2, 0)  # status line and key help at the bottom
    return x0, y0, max(width - x0, 0), rows


def _page(state) -> int:
    screen = getattr(state, "meta", {}).get("screen") if state is not None else None
    if screen:
        return max(_geometry(int(screen[0]), int(screen[1]))[3], 1)
    return DEFAULT_PAGE


def _shape(state):
    m = getattr(state, "matrix", None) if state is not None else None
    if m is None or m.matrix is None or np.ndim(m.matrix) != 2:
        return None
    return np.shape(m.matrix)


def handle_key(view, key: str, state=None, cache=None):
    """Arrows move the cursor, PgUp/PgDn a page of rows, < > a page of columns,
    Home/End the corners, d the diagonal, n the scale."""
    mv = get_view(view)
    shape = _shape(state)
    q, k = shape if shape is not None else (1, 1)
    page = _page(state)
    r, c = mv.row, mv.col
    if key in ("KEY_UP", "up", "k"):
        r -= 1
    elif key in ("KEY_DOWN", "down", "j"):
        r += 1
    elif key in ("KEY_LEFT", "left", "h"):
        c -= 1
    elif key in ("KEY_RIGHT", "right", "l"):
        c += 1
    elif key in ("KEY_PGUP", "pgup", "KEY_PPAGE"):
        r -= page
    elif key in ("KEY_PGDOWN", "pgdown", "KEY_NPAGE"):
        r += page
    elif key in ("<", ",", "KEY_SLEFT"):
        c -= page * 2
    elif key in (">", ".", "KEY_SRIGHT"):
        c += page * 2
    elif key in ("KEY_HOME", "home", "g"):
        r, c = 0, 0
    elif key in ("KEY_END", "end", "G"):
        r, c = q - 1, k - 1
    elif key == "d":
        c = r + (k - q)  # queries sit at the end of the keys
    elif key == "n":
        return _with(view, dataclasses.replace(mv, scale=SCALES[(SCALES.index(mv.scale) + 1) % len(SCALES)]))
    else:
        return view
    r, c = min(max(r, 0), q - 1), min(max(c, 0), k - 1)
    return _with(view, dataclasses.replace(mv, row=r, col=c))


def cache_key(state, view, now):
    return (state.matrix_v, get_view(view))


def _start(cursor: int, n: int, visible: int) -> int:
    """First index shown so the cursor sits in the middle (clamped to the ends)."""
    return int(min(max(cursor - visible // 2, 0), max(n - visible, 0)))


def _row_max(m: np.ndarray, r0: int, r1: int, last: dict) -> np.ndarray:
    """Largest weight of rows r0..r1, kept in `last` for the matrix shown (held, so its id
    is not reused): a row is scanned once, not per frame."""
    if last.get("matrix") is not m:
        last.update(matrix=m, max=np.full(m.shape[0], np.nan, np.float32))
    cached = last["max"]
    todo = np.isnan(cached[r0:r1])
    if todo.any():
        idx = np.arange(r0, r1)[todo]
        cached[idx] = np.asarray(m[idx], dtype=np.float32).max(axis=1)
    return cached[r0:r1]


def _levels(vals: np.ndarray, scale: str, row_max: Optional[np.ndarray]) -> np.ndarray:
    v = vals.astype(np.float32, copy=False)
    if scale == "row" and row_max is not None:
        v = v / np.maximum(row_max[:, None], 1e-30)
    elif scale == "log":
        with np.errstate(divide="ignore"):
            v = (np.log10(np.maximum(v, 1e-12)) + 4.0) / 4.0
    lv = np.clip((np.nan_to_num(v, nan=0.0) * 4.0).astype(np.int8), 0, 3)
    return lv


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    c = Canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    ev = getattr(state, "matrix", None)
    mv = get_view(view)
    title_rule(cache, c, 0, "ATTENTION MATRIX", theme, right="m/Esc: back")
    if ev is None or ev.matrix is None or np.ndim(ev.matrix) != 2 or 0 in np.shape(ev.matrix):
        message(c, 2, "no attention matrix yet: each prefill sends one (train --matrix_layer, --matrix_head)", theme)
        return c
    m = ev.matrix
    nq, nk = m.shape
    x0, y0, cols, rows = _geometry(width, height)
    r_cur, c_cur = min(mv.row, nq - 1), min(mv.col, nk - 1)
    r0, k0 = _start(r_cur, nq, rows), _start(c_cur, nk, cols)
    r1, k1 = min(r0 + rows, nq), min(k0 + cols, nk)
    qtok, ktok = list(ev.query_tokens or []), list(ev.key_tokens or [])
    types = list(ev.token_types or [])
    off = nk - nq  # query i is key position i + off
    pool = max(int(ev.pool or 1), 1)
    window = (int(ev.sliding_window) + pool - 1) // pool if ev.sliding_window else None

    _column_header(c, x0, k0, k1, c_cur, ktok, types, theme)
    window_vals = np.asarray(m[r0:r1, k0:k1])
    row_max = _row_max(m, r0, r1, cache.memo("matrix.row_max")) if mv.scale == "row" and r1 > r0 else None
    levels = _levels(window_vals, mv.scale, row_max)
    # Codes 0..3 are ramp levels, 4 a future key (blank), 5 a key outside the window.
    glyphs = np.array(list(RAMP) + [" ", OUTSIDE], dtype=object)
    styles = np.empty(6, dtype=object)
    for j, st in enumerate(list(theme.heat) + [theme.plain, theme.dim]):
        styles[j] = st  # one by one: a Style is a tuple numpy would unpack
    kpos = np.arange(k0, k1)
    for i, r in enumerate(range(r0, r1)):
        y = y0 + i
        codes = levels[i]
        qpos = r + off
        if k1 - 1 > qpos or (window is not None and k0 <= qpos - window):
            codes = codes.copy()
            codes[kpos > qpos] = 4
            if window is not None:
                codes[kpos <= qpos - window] = 5
        put_glyphs(c, x0, y, glyphs[codes].tolist(), styles[codes].tolist())
        _row_label(c, y, x0, r, r == r_cur, qtok, types, off, theme)
    if r0 <= r_cur < r1 and k0 <= c_cur < k1:  # the cursor cell in reverse video
        y, x = y0 + r_cur - r0, x0 + c_cur - k0
        st = c.styles[y][x]
        c.styles[y][x] = Style(st.fg, st.bg, True, False, True, st.underline)
    _status(c, ev, r_cur, c_cur, qtok, ktok, mv, theme)
    return c


def _label(tokens, i: int) -> str:
    return clean_label(tokens[i]) if 0 <= i < len(tokens) else "?"


def _type_style(kind: str, theme):
    return theme.vision if kind == "vision" else (theme.warn if kind == "special" else theme.label)


def _row_label(c: Canvas, y: int, x0: int, r: int, current: bool, qtok, types, off, theme) -> None:
    kind = types[r + off] if 0 <= r + off < len(types) else "text"
    style = theme.token if current else _type_style(kind, theme)
    idx = f"{r:>4} "
    text = idx + truncate(_label(qtok, r), max(x0 - 1 - len(idx), 0))
    c.put(0, y, text, style, max_width=x0 - 1)
    c.put(x0 - 1, y, TYPE_MARK.get(kind, " "), _type_style(kind, theme))


def _column_header(c: Canvas, x0: int, k0: int, k1: int, c_cur: int, ktok, types, theme) -> None:
    """Key token labels written downwards, one column each, then a row of type marks."""
    n = k1 - k0
    labels = [_vertical(_label(ktok, k)).ljust(COL_LABEL_ROWS) for k in range(k0, k1)]
    kinds = [types[k] if k < len(types) else "text" for k in range(k0, k1)]
    type_styles = [_type_style(kind, theme) for kind in kinds]
    styles = list(type_styles)
    if k0 <= c_cur < k1:
        styles[c_cur - k0] = theme.token
    for j in range(COL_LABEL_ROWS):
        put_glyphs(c, x0, 1 + j, [lab[j] for lab in labels], styles)
    put_glyphs(c, x0, 1 + COL_LABEL_ROWS, [TYPE_MARK.get(kind, " ") for kind in kinds], type_styles[:n])


@text_memo(maxsize=65536)
def _vertical(label: str) -> str:
    """The label's first characters, each exactly one cell wide (others shown as …)."""
    out = []
    for ch in sanitize(label)[:COL_LABEL_ROWS]:
        out.append(ch if char_width(ch) == 1 else "…")
    return "".join(out)


def _status(c: Canvas, ev, r: int, k: int, qtok, ktok, mv: MatrixView, theme) -> None:
    y = c.height - 2
    layer = "mean" if ev.layer is None else str(ev.layer)
    head = "mean" if ev.head is None else str(ev.head)
    val = float(np.asarray(ev.matrix[r, k], dtype=np.float32))
    nq, nk = ev.matrix.shape
    text = (f"layer {layer} head {head}  {nq}x{nk}" + (f" pooled x{ev.pool}" if ev.pool and ev.pool > 1 else "")
            + f"  [{r},{k}] '{_label(qtok, r)}' -> '{_label(ktok, k)}' = {val:.4f}  scale {mv.scale}")
    c.put(0, y, text, theme.value, max_width=c.width)
    help_text = "░▒▓█ ◆special ▦image ·outside window │ arrows PgUp/PgDn < > Home/End  d diagonal  n scale"
    c.put(0, c.height - 1, help_text, theme.label, max_width=c.width)
