"""Group view (key g): one prompt's rollout group of the newest update, best sample first.

Every sample of the prompt with its reward and group-relative advantage, and its tokens
coloured by a per-token metric the trainer sent (`s` cycles logprob, entropy, KL to the
reference, credit, ratio after the update; `[` `]` cycle the prompts). Colour only adds:
under each sample's tokens a strip of glyphs gives every token's level (░▒▓█ from the
group's lowest to highest value; for the signed metrics ▼▽─△▲ around 0 for credit and
1 for the ratio), so the view reads the same without colour. A token whose value was
not sent shows `·`. Token and prompt texts come from the run: they are sanitised.
"""
from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import List

from vlmrl.instrument.events import GROUP_METRICS
from vlmrl.utils.tui.canvas import Canvas, text_width, truncate
from vlmrl.utils.tui.group_data import CENTRE, level, metric_scale, metric_values, num_prompts, samples
from vlmrl.utils.tui.palette import NOT_MEASURED, RAMP
from vlmrl.utils.tui.panels.common import fmt_int, fmt_num, memo_canvas, message, put, put_glyphs, title_rule
from vlmrl.utils.tui.render_cache import RenderCache

TITLE = "ROLLOUT GROUP"
SIGNED = "▼▽─△▲"
TOKEN_CELLS = 16  # a longer token is cut with an ellipsis
NAMES = MappingProxyType({"logprob": "log-prob (sampling policy)", "entropy": "entropy (nats)", "kl": "KL to reference (k3)",
         "credit": "credit (d loss/d logp x logp)", "ratio": "ratio after update (new/old)"})
HEAD = 22  # cells before the tokens: marker, sample, reward, advantage, rule


@dataclasses.dataclass(frozen=True)
class GroupView:
    prompt: int = 0
    metric: int = 0  # index into GROUP_METRICS


def get_view(view) -> GroupView:
    gv = (getattr(view, "mode_state", None) or {}).get("group")
    return gv if isinstance(gv, GroupView) else GroupView()


def handle_key(view, key: str, state=None, cache=None):
    """] / [ next / previous prompt, s / S next / previous metric."""
    gv = get_view(view)
    n = num_prompts(state.group) if state is not None and state.group is not None else 1
    if key == "]":
        gv = dataclasses.replace(gv, prompt=(gv.prompt + 1) % n)
    elif key == "[":
        gv = dataclasses.replace(gv, prompt=(gv.prompt - 1) % n)
    elif key in ("s", "S"):
        gv = dataclasses.replace(gv, metric=(gv.metric + (1 if key == "s" else -1)) % len(GROUP_METRICS))
    else:
        return view
    st = dict(getattr(view, "mode_state", None) or {})
    st["group"] = gv
    return view.replace(mode_state=st)


def cache_key(state, view, now):
    return (state.group_v, get_view(view))


def glyph(lv: float, metric: str) -> str:
    """The strip glyph of a level (see `group_data.level`)."""
    if not math.isfinite(lv):
        return NOT_MEASURED
    if metric in CENTRE:
        a = abs(lv)
        i = 2 if a < 0.25 else (1 if a < 0.75 else 0)
        return SIGNED[i] if lv < 0 else SIGNED[4 - i]
    return RAMP[min(int(lv * 4), 3)]


def _style(lv: float, metric: str, theme):
    if not math.isfinite(lv):
        return theme.na
    if metric in CENTRE:
        if abs(lv) < 0.25:
            return theme.label
        return theme.bar_neg if lv < 0 else theme.bar_pos
    return theme.heat[min(int(lv * 4), 3)]


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    """The view's canvas; kept in the dashboard's RenderCache until what it shows changes
    (the layout redraws a mode's screen every frame)."""
    cache = RenderCache() if cache is None else cache
    key = (cache_key(state, view, now), width, height, id(theme), state.store_id)
    return memo_canvas(cache.memo("group.canvas"), key, lambda: _draw(state, view, width, height, theme, cache))


def _draw(state, view, width, height, theme, cache) -> Canvas:
    c = Canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    ev = state.group
    gv = get_view(view)
    metric = GROUP_METRICS[gv.metric % len(GROUP_METRICS)]
    if ev is None:
        title_rule(cache, c, 0, TITLE, theme, right="g/Esc: back")
        status = state.run.status if state.run is not None and state.run.status else ""
        message(c, 2, "no rollout group yet: the trainer sends one per update under --tui or --record"
                + (f" (run: {status})" if status else ""), theme)
        return c
    n = num_prompts(ev)
    p = gv.prompt % n
    title_rule(cache, c, 0, TITLE, theme, right=[f"update {fmt_int(ev.step)} · prompt {p + 1}/{n} · [ ] prompt · s metric",
                                          f"update {fmt_int(ev.step)} · prompt {p + 1}/{n}"])
    question = ev.prompts[p]
    answer = ev.answers[p] if ev.answers else None
    x = put(c, 1, 1, "prompt ", theme.label)
    room = width - x - 1 - (text_width(answer) + 10 if answer is not None else 0)
    x = put(c, x, 1, truncate(question, max(room, 0)), theme.value)
    if answer is not None:
        x = put(c, x + 2, 1, "answer ", theme.label)
        put(c, x, 1, truncate(answer, max(width - x - 1, 0)), theme.good)
    rows = samples(ev, p)
    values = metric_values(ev, metric, [s.row for s in rows])
    low, high = metric_scale(values, metric)
    _legend(c, 2, metric, low, high, theme)
    put(c, 2, 3, "#", theme.label)
    put(c, 8, 3, "reward", theme.label)
    put(c, 18, 3, "adv", theme.label)
    put(c, HEAD - 1, 3, "│", theme.rule)
    put(c, HEAD + 1, 3, "tokens", theme.label)
    # Rows each sample gets: a glyph strip under every token line when there are two,
    # and long completions wrap onto as many token lines as the share allows.
    per = max(1, (height - 4) // max(len(rows), 1))
    strips = per >= 2
    lines = per // 2 if strips else 1
    y = 4
    for i, s in enumerate(rows):
        if y >= height:
            break
        y = _sample(c, y, i == 0, s, s.row - p * ev.group, values[i], low, high, metric, strips, lines, theme)
    if not strips and y < height:
        message(c, y, "(taller terminal: level glyphs under every token)", theme)
    return c


def _legend(c: Canvas, y: int, metric: str, low: float, high: float, theme) -> None:
    x = put(c, 1, y, "metric ", theme.label)
    x = put(c, x, y, NAMES[metric], theme.token)
    x = put(c, x, y, "  ", theme.plain)
    if not math.isfinite(low):
        # The ratio after the update is measured on some updates only (a time budget).
        why = "not measured this update" if metric == "ratio" else "not sent for this group"
        put(c, x, y, f"n/a: {why}", theme.na)
        return
    if metric in CENTRE:
        centre = CENTRE[metric]
        dev = high - centre
        items = [(SIGNED[0], f"≤{fmt_num(centre - 0.75 * dev, 3)}", theme.bar_neg),
                 (SIGNED[2], f"{fmt_num(centre, 0)}±{fmt_num(0.25 * dev, 3)}", theme.label),
                 (SIGNED[4], f"≥{fmt_num(centre + 0.75 * dev, 3)}", theme.bar_pos)]
    else:
        span = high - low
        items = [(RAMP[i], f"{'≥' if i else '<'}{fmt_num(low + (i if i else 1) * span / 4, 3)}", theme.heat[i])
                 for i in range(4)]
    items.append((NOT_MEASURED, "not sent", theme.na))
    for g, text, style in items:
        if x + 2 + text_width(text) + 2 > c.width:
            break
        x = put(c, x, y, g, style)
        x = put(c, x + 1, y, text + "  ", theme.label)


def _sample(c: Canvas, y: int, best: bool, s, index: int, vals, low, high, metric, strips: bool, lines: int,
            theme) -> int:
    """One sample: its figures, then its tokens on up to `lines` token lines (each with its
    glyph strip below when `strips`); returns the row after it."""
    step = 2 if strips else 1
    put(c, 0, y, "▶" if best else " ", theme.warn if best else theme.plain)
    put(c, 2, y, f"#{index}", theme.label)
    put(c, 7, y, f"{fmt_num(s.reward, 3, signed=True):>7}", theme.good if s.reward > 0 else theme.value)
    put(c, 15, y, f"{fmt_num(s.advantage, 2, signed=True):>6}", theme.value)
    x, limit, line, used = HEAD + 1, c.width - 1, 0, 1
    shown = 0
    for j, tok in enumerate(s.tokens):
        text = truncate(tok, TOKEN_CELLS) or "∅"
        w = text_width(text)
        more = s.length - j - 1
        last_line = line == lines - 1
        if x + w + (len(f" +{more}") if more and last_line else 0) > limit:
            if last_line or x == HEAD + 1:
                break
            line, x = line + 1, HEAD + 1  # wrap onto the next token line
            used = line + 1
        row = y + line * step
        lv = level(float(vals[j]) if j < len(vals) else math.nan, low, high, metric)
        x0 = x
        x = put(c, x, row, text, _style(lv, metric, theme))
        if strips and row + 1 < c.height:
            put_glyphs(c, x0, row + 1, [glyph(lv, metric)] * (x - x0), [_style(lv, metric, theme)] * (x - x0))
        x += 1
        shown += 1
    rest = s.length - shown
    row = y + line * step
    if rest > 0:
        put(c, x, row, f"+{rest}", theme.na)
    if not s.tokens:
        put(c, x, row, "(empty completion)", theme.na)
    for r in range(y, min(y + used * step, c.height)):
        put(c, HEAD - 1, r, "│", theme.rule)
    return y + used * step


def sample_order(state, view) -> List[int]:
    """Rows of the shown prompt, in the order the view lists them (best first)."""
    ev = state.group
    if ev is None:
        return []
    return [s.row for s in samples(ev, get_view(view).prompt % num_prompts(ev))]
