"""Token attention explorer (key e): which input tokens, and which earlier outputs, fed each output.

The prompt and the generated text are laid out as paragraphs; each token carries a ramp
glyph (░▒▓█ relative to the strongest link shown, `·` below the threshold) and colour,
and a list of the strongest links follows. Numbers come from `explorer_math` (separate
input/output normalisation, first slot removed), cached per (prompt, length) so moving
through steps or the threshold does not reprocess the attention rows.

Keys: ← → step (End follows the newest), + − threshold by 0.001 ([ ] by 0.01), ↑ ↓ select
a token (its links only), r reset the selection, a show all steps' links.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from vlmrl.utils.tui import explorer_math as em
from vlmrl.utils.tui.canvas import Canvas, Style, text_width, truncate
from vlmrl.utils.tui.palette import RAMP
from vlmrl.utils.tui.panels.common import message, title_rule
from vlmrl.utils.tui.render_cache import RenderCache

MAX_LABEL = 20
BELOW = "·"


@dataclasses.dataclass(frozen=True)
class ExplorerView:
    index: Optional[int] = None  # emitted step shown (row of the data); None: the newest
    threshold: float = em.DEFAULT_THRESHOLD
    selected: Optional[Tuple[str, int]] = None  # ("in", i) or ("out", step)
    show_all: bool = False


def get_view(view) -> ExplorerView:
    ev = (getattr(view, "mode_state", None) or {}).get("explorer")
    return ev if isinstance(ev, ExplorerView) else ExplorerView()


def _with(view, xv: ExplorerView):
    st = dict(getattr(view, "mode_state", None) or {})
    st["explorer"] = xv
    return view.replace(mode_state=st)


# ----------------------------------------------------------------- data


def processed(cache) -> em.LRUCache:
    """The dashboard's processed explorer data (kept by prompt and length)."""
    return cache.memo("explorer.processed", lambda: em.LRUCache(em.CACHE_SIZE))


def explorer_data(state, batch_index: int = 0, cache=None):
    """(ExplorerData, None) for the shown batch row, or (None, why not). `cache`: the
    dashboard's RenderCache, so moving through steps does not reprocess the rows."""
    steps = tuple(s for s in (getattr(state, "explorer", None) or {}).get(batch_index, ()) if s.row is not None)
    if not steps:
        return None, "no attention rows yet: the explorer needs TapConfig(enabled=True, attention_row=True)"
    # The store starts a row's list at each prefill, so the first entry produced output 0;
    # step numbers may be global (a trainer counting on), hence relative to it.
    step0 = steps[0].step
    prompt_len = steps[0].cache_len
    steps = tuple(s for s in steps if s.row.shape[0] >= prompt_len + s.step - step0)
    if prompt_len < 1 or not steps or steps[0].step != step0:
        return None, "attention rows do not cover the prompt (cache lengths out of step)"
    tokens, pad = _prompt_tokens(state, steps[0].row, prompt_len)
    key = (batch_index, tokens, prompt_len, pad, tuple((s.step, s.token_id) for s in steps))

    def compute():
        return em.from_rows([s.row[pad:] for s in steps], prompt_len - pad, tokens,
                            [s.text for s in steps], steps=[s.step - step0 for s in steps])

    if cache is None:
        return compute(), None
    return processed(cache).get(key, compute), None


def _prompt_tokens(state, first_row: np.ndarray, prompt_len: int):
    """Prompt token texts (from the prefill AttentionMatrix when it matches) and left padding."""
    m = getattr(state, "matrix", None)
    if m is not None and (m.pool or 1) == 1 and 0 < len(m.key_tokens) <= prompt_len:
        return tuple(str(t) for t in m.key_tokens), prompt_len - len(m.key_tokens)
    # Without texts: left-padding slots are masked, so their attention is exactly zero.
    nz = np.flatnonzero(np.asarray(first_row[:prompt_len]) != 0)
    return None, int(nz[0]) if nz.size else 0


# ----------------------------------------------------------------- keys


def handle_key(view, key: str, state=None, cache=None):
    xv = get_view(view)
    data, _ = explorer_data(state, getattr(view, "batch_index", 0), cache) if state is not None else (None, None)
    n = data.num_steps if data is not None else 0
    cur = (n - 1 if xv.index is None else min(xv.index, n - 1)) if n else 0
    if key in ("KEY_LEFT", "left", "h"):
        xv = dataclasses.replace(xv, index=max(cur - 1, 0))
    elif key in ("KEY_RIGHT", "right", "l"):
        xv = dataclasses.replace(xv, index=None if cur + 1 >= n - 1 else cur + 1)
    elif key in ("KEY_HOME", "home", "g"):
        xv = dataclasses.replace(xv, index=0)
    elif key in ("KEY_END", "end", "G"):
        xv = dataclasses.replace(xv, index=None)
    elif key in ("+", "="):
        xv = dataclasses.replace(xv, threshold=em.step_threshold(xv.threshold, +1))
    elif key in ("-", "_", "−"):
        xv = dataclasses.replace(xv, threshold=em.step_threshold(xv.threshold, -1))
    elif key == "]":
        xv = dataclasses.replace(xv, threshold=em.step_threshold(xv.threshold, +10))
    elif key == "[":
        xv = dataclasses.replace(xv, threshold=em.step_threshold(xv.threshold, -10))
    elif key in ("KEY_DOWN", "down", "j", "KEY_UP", "up", "k"):
        tokens = _selectable(data, cur)
        if tokens:
            pos = tokens.index(xv.selected) if xv.selected in tokens else None
            down = key in ("KEY_DOWN", "down", "j")
            if pos is None:
                pos = 0 if down else len(tokens) - 1
            else:
                pos = (pos + (1 if down else -1)) % len(tokens)
            xv = dataclasses.replace(xv, selected=tokens[pos])
    elif key == "r":
        xv = dataclasses.replace(xv, selected=None)
    elif key == "a":
        xv = dataclasses.replace(xv, show_all=not xv.show_all)
    else:
        return view
    return _with(view, xv)


def _selectable(data, cur: int) -> List[Tuple[str, int]]:
    if data is None or data.num_steps == 0:
        return []
    last = data.steps[cur]
    return [("in", i) for i in range(len(data.input_labels))] + [("out", j) for j in range(last + 1)]


def cache_key(state, view, now):
    return (getattr(state, "decode_v", None), getattr(state, "matrix_v", None), getattr(view, "batch_index", 0),
            get_view(view))


# ----------------------------------------------------------------- render


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    c = Canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    xv = get_view(view)
    data, why = explorer_data(state, getattr(view, "batch_index", 0), cache)
    if data is None:
        title_rule(cache, c, 0, "TOKEN ATTENTION EXPLORER", theme, right="e/Esc: back")
        message(c, 2, why, theme)
        return c
    idx = data.num_steps - 1 if xv.index is None else min(max(xv.index, 0), data.num_steps - 1)
    step = data.steps[idx]
    links = em.edges(data, idx, xv.threshold, xv.selected, xv.show_all)
    right = f"step {step} ({idx + 1}/{data.num_steps} emitted{'' if xv.index is not None else ', newest'})"
    title_rule(cache, c, 0, "TOKEN ATTENTION EXPLORER", theme, right=right)
    sel = "none" if xv.selected is None else _name(data, xv.selected)
    c.put(1, 1, f"threshold {xv.threshold:.3f}   links {'all steps' if xv.show_all else 'this step'}   "
                f"selected {sel}   first slot removed   each part normalised", theme.label, max_width=width - 2)
    # weight per token at the other end of a link (strongest when several)
    ends = {}
    for e in links:
        other = e.source if xv.selected is None or e.source != xv.selected else ("out", e.target)
        ends[other] = max(ends.get(other, 0.0), e.weight)
    top = max(ends.values(), default=0.0)
    body = height - 3  # title, settings line, key help
    in_items = [(("in", i), lab) for i, lab in enumerate(data.input_labels)]
    out_items = [(("out", j), data.output_labels[j]) for j in range(step + 1)]
    in_lines, in_focus = _layout(width - 2, in_items, ends, top, xv, None, theme)
    out_lines, out_focus = _layout(width - 2, out_items, ends, top, xv, ("out", step), theme)
    # each paragraph takes the lines it needs, up to a share of the screen; links get the rest
    in_rows = min(len(in_lines), max(1, body * 2 // 5 - 1))
    out_rows = min(len(out_lines), max(1, body * 3 // 10 - 1))
    y = 2
    c.put(1, y, f"INPUT ({len(in_items)} tokens) -> output {_name(data, ('out', step))}", theme.title,
          max_width=width - 2)
    _draw(c, y + 1, in_rows, in_lines, in_focus, theme)
    y += 1 + in_rows
    c.put(1, y, f"OUTPUT (steps 0..{step})", theme.title, max_width=width - 2)
    _draw(c, y + 1, out_rows, out_lines, out_focus, theme)
    y += 1 + out_rows
    _link_list(c, y, height - 1 - y, data, links, theme)
    c.put(0, height - 1, "← → step  Home/End  + − threshold ([ ] x10)  ↑ ↓ select  r reset  a all steps  e/Esc back",
          theme.label, max_width=width)
    return c


def _name(data, tok) -> str:
    kind, i = tok
    labels = data.input_labels if kind == "in" else data.output_labels
    label = labels[i] if 0 <= i < len(labels) else "?"
    return f"{kind}[{i}] '{truncate(label, MAX_LABEL)}'"


def _glyph(w: Optional[float], top: float, threshold: float) -> Tuple[str, int]:
    """(glyph, ramp level or -1) of a link weight relative to the strongest one shown."""
    if w is None or w < threshold or top <= 0:
        return BELOW, -1
    level = min(int(w / top * 4.0), 3)
    return RAMP[level], level


def _layout(width: int, items, ends, top, xv: ExplorerView, current, theme):
    """Tokens laid out like text, wrapped at `width`: ([[(x, text, style)]], focused line)."""
    lines: List[list] = [[]]
    x = 0
    focus_line = 0
    focus = xv.selected if xv.selected is not None else current
    for tok, label in items:
        glyph, level = _glyph(ends.get(tok), top, xv.threshold)
        if tok == current and tok not in ends:
            glyph = "▶"  # the output this step produced: the target of the links
        cell = glyph + truncate(label, MAX_LABEL)
        cw = text_width(cell)
        if x and x + cw > width:
            lines.append([])
            x = 0
        if tok == focus:
            focus_line = len(lines) - 1
        style = theme.dim if level < 0 else theme.heat[level]
        if tok == current:
            style = theme.token
        if tok == xv.selected:
            style = Style(style.fg, style.bg, True, False, True, True)
        lines[-1].append((x, cell, style))
        x += cw + 1
    return lines, focus_line


def _draw(c: Canvas, y0: int, rows: int, lines, focus_line: int, theme) -> None:
    """The `rows` lines around the focused one; … marks more below."""
    if rows <= 0:
        return
    first = min(max(focus_line - rows // 2, 0), max(len(lines) - rows, 0))
    for r, line in enumerate(lines[first:first + rows]):
        for x, cell, style in line:
            c.put(1 + x, y0 + r, cell, style, max_width=c.width - 2 - x)
    if first + rows < len(lines):
        c.put(c.width - 2, y0 + rows - 1, "…", theme.label)


def _link_list(c: Canvas, y: int, rows: int, data, links, theme) -> None:
    if rows <= 0:
        return
    c.put(1, y, f"LINKS ({len(links)} at or above threshold, strongest first)", theme.title, max_width=c.width - 2)
    top = links[0].weight if links else 0.0
    for r, e in enumerate(links[: rows - 1]):
        glyph, level = _glyph(e.weight, top, 0.0)
        text = f"{e.weight:.3f} {glyph} {_name(data, e.source)} -> {_name(data, ('out', e.target))}"
        c.put(2, y + 1 + r, text, theme.heat[level] if level >= 0 else theme.dim, max_width=c.width - 3)
