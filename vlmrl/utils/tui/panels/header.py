"""Header: training step, reward mean±std, KL, loss, tokens/sec, entropy, clip fraction,
dropped events, FPS, uptime; reward and KL sparklines where there is room."""
from __future__ import annotations

from vlmrl.utils.tui.canvas import Canvas, text_width, truncate
from vlmrl.utils.tui.palette import sparkline
from vlmrl.utils.tui.panels.common import NA, fmt_duration, fmt_int, fmt_num, fmt_rate, fmt_scale, put, put_glyphs
from vlmrl.utils.tui.render_cache import RenderCache

SEP = " │ "
MIN_SPARK = 8  # sparkline cells worth drawing


def _segments(state, now):
    t = state.training
    meta = state.meta
    reward = NA if t is None else f"{fmt_num(t.reward_mean, 3, signed=True)}±{fmt_num(t.reward_std, 3)}"
    fps = meta.get("fps")
    status = run_status(state)
    return ([("status", status)] if status else []) + [
        ("step", NA if t is None else fmt_int(t.step)),
        ("reward", reward),
        ("KL", NA if t is None else fmt_num(t.kl, 4)),
        ("loss", NA if t is None else fmt_num(t.loss, 4)),
        ("tok/s", NA if t is None else fmt_rate(t.tokens_per_sec)),
        ("entropy", NA if t is None else fmt_num(t.policy_entropy, 3)),
        ("clip", NA if t is None else fmt_num(t.clip_fraction, 3)),
        ("dropped", fmt_int(state.dropped)),
        ("fps", NA if fps is None else fmt_num(fps, 1)),
        ("up", fmt_duration(state.uptime(now))),
    ] + _scale(state) + _frame_ms(state)


def _scale(state):
    """The devices, mesh and processes of a run on more than one device (none on one)."""
    text = fmt_scale(state.run)
    return [("devices", text)] if text else []


def run_status(state) -> str:
    """What the run is doing when it is not training: how it ended, what it is compiling
    and for how long (the run republishes this every second), or the viewer's own status
    (e.g. "waiting for FILE" before a log appears)."""
    end, run = state.run_end, state.run
    if end is not None:
        at = "" if end.step is None else f" at step {fmt_int(end.step)}"
        after = state.meta.get("status")  # what the viewer says after the end ("q leaves")
        return f"{'finished' if end.reason == 'finished' else str(end.reason)}{at}" + (f" — {after}" if after else "")
    if run is not None and run.status:
        secs = run.status_seconds
        return str(run.status) + ("" if secs is None else f" · {fmt_num(secs, 0)} s")
    return str(state.meta.get("status") or "")


def _frame_ms(state):
    """The dashboard's own cost per frame, when the live loop reports it (last: optional)."""
    ms = state.meta.get("frame_ms")
    return [] if ms is None else [("frame", fmt_num(ms, 2) + "ms")]


def cache_key(state, view, now):
    meta = state.meta
    fps, ms = meta.get("fps"), meta.get("frame_ms")
    # fps and frame ms as shown, so a jittering float does not force a redraw
    return (state.train_v, state.run_v, state.dropped, meta.get("status"), None if fps is None else fmt_num(fps, 1),
            int(state.uptime(now)), None if ms is None else fmt_num(ms, 2))


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    c = Canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    brand = "VLMRL" if state.run is None else truncate(f"VLMRL {state.run.model_name}", max(5, width // 3))
    rows = [[]]
    x = text_width(brand)
    for label, value in _segments(state, now):
        if label == "status":  # long words, not a number: cut with "…" rather than left out
            room = width - x - len(SEP) - text_width(label) - 1
            value = truncate(value, room if room >= 16 else width - text_width(label) - 1)
        body = text_width(label) + 1 + text_width(value)
        if x + (len(SEP) if x else 0) + body > width:
            if len(rows) >= height:
                continue  # no room left: leave this figure out whole rather than cut it
            rows.append([])
            x = 0
            if body > width:
                continue
        x += (len(SEP) if x else 0) + body
        rows[-1].append((label, value))
    for y, segs in enumerate(rows[:height]):
        cx = 0
        if y == 0:
            cx = put(c, 0, 0, brand, theme.title)
        for i, (label, value) in enumerate(segs):
            if cx > 0:
                cx = put(c, cx, y, SEP, theme.rule)
            cx = put(c, cx, y, label + " ", theme.label)
            cx = put(c, cx, y, value, theme.na if value == NA else theme.value)
    _sparklines(c, state, rows, theme, cache)
    return c


def _sparklines(c: Canvas, state, rows, theme, cache) -> None:
    """Reward and KL history on a free header row, else at the end of the last row."""
    hist = state.history
    if len(hist) < 2:
        return
    used = len(rows)
    if used < c.height:
        y, x0 = used, 0
    else:
        y = c.height - 1
        x0 = _row_end(c, y) + len(SEP)
    avail = c.width - x0
    each = (avail - len("reward  KL ") - len(SEP)) // 2
    if each < MIN_SPARK:
        return
    x = x0
    if x0:
        x = put(c, x0 - len(SEP), y, SEP, theme.rule)
    reward, kl = _sparks(hist, each, cache.memo("header.sparks"))
    # The spark glyphs are one cell each and land on blank cells (a free row, or past the
    # row's end), so they are slice-assigned rather than put char by char.
    x = put(c, x, y, "reward ", theme.label)
    x = put_glyphs(c, x, y, reward, [theme.good] * len(reward))
    x = put(c, x, y, SEP, theme.rule)
    x = put(c, x, y, "KL ", theme.label)
    put_glyphs(c, x, y, kl, [theme.warn] * len(kl))


def _sparks(hist, each: int, last: dict):
    """Reward and KL sparklines of the last `each` points. The header redraws every second
    (uptime) with the same history tuple (the store keeps it until a training step), so
    the last pair is kept in `last` (the history itself held, so its id is not reused);
    only the points shown are read."""
    if last.get("history") is not hist or last.get("cells") != each:
        tail = hist[-each:]
        # rewards in [0, 1] keep that scale, so the line's height reads as the reward itself
        last.update(history=hist, cells=each, lines=(sparkline([h.reward_mean for h in tail], each, scale=(0.0, 1.0)),
                                                     sparkline([h.kl for h in tail], each)))
    return last["lines"]


def _row_end(c: Canvas, y: int) -> int:
    row = c.chars[y]
    end = len(row)
    while end > 0 and row[end - 1] == " ":
        end -= 1
    return end
