"""Footer: key help, paused/live, the current view and stat, dropped events, problems,
warnings held while the dashboard draws (`meta["notice"]`), and the `reset` hint
(SIGKILL cannot be caught, so the cure is named on screen)."""
from __future__ import annotations

from vlmrl.utils.tui.canvas import Canvas, text_width, truncate
from vlmrl.utils.tui.panels.common import fmt_int, put

KEYS_LONG = (("q", "quit"), ("p", "pause"), ("[]", "page"), ("s", "stat"), ("b", "batch"),
             ("m", "matrix"), ("e", "explore"), ("c", "charts"), ("g", "group"), ("k", "plan"), ("u", "updates"),
             ("v", "image"), ("?", "help"))
KEYS_SHORT = tuple((k, "") for k, _ in KEYS_LONG)
KEYS_TINY = tuple((k, "") for k, _ in KEYS_LONG if k not in "cgkuv")  # the reset hint matters more
RESET_HINTS = ("stuck terminal? type reset", "stuck? reset")
SEP = " · "


def cache_key(state, view, now):
    return (view.paused, view.mode, view.stat_index, view.batch_index % state.batch_size(),
            state.dropped, state.problems, state.meta.get("error"), state.meta.get("source"),
            state.meta.get("notice"))


def _status(state, view):
    parts = ["PAUSED" if view.paused else str(state.meta.get("source", "LIVE"))]
    parts.append(view.mode)
    if view.mode == "dashboard":
        parts.append(view.stat)
        if state.batch_size() > 1:
            parts.append(f"b{view.batch_index % state.batch_size()}/{state.batch_size()}")
    parts.append(f"dropped {fmt_int(state.dropped)}")
    return parts


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    c = Canvas(width, height, theme.footer)
    if width <= 0 or height <= 0:
        return c
    y = height - 1
    alert = (state.meta.get("error") or (state.problems[-1] if state.problems else None)
             or state.meta.get("notice"))
    parts = _status(state, view)
    if not (alert and height == 1) and _fit(width - _parts_width(parts) - 3)[0] is not KEYS_LONG \
            and _fit(width - _parts_width(parts[:-1]) - 3)[0] is KEYS_LONG:
        parts = parts[:-1]  # "dropped N" is in the header too; here the long key list says more
    x = 0
    for i, part in enumerate(parts):
        text = (SEP if i else " ") + part
        if x + text_width(text) > width - 1:
            break  # the most important parts come first; the rest waits for a wider terminal
        style = theme.alert if (i == 0 and view.paused) else theme.footer
        x = put(c, x, y, text, style)
    if alert and height == 1:
        # The alert takes what is left after the short key help and the short reset hint.
        room = width - x - 3 - _keys_width(KEYS_SHORT) - text_width(RESET_HINTS[1]) - 5
        if room >= 8:
            x = put(c, x, y, " │ " + truncate("! " + str(alert), room), theme.alert)
    keys, hint = _fit(width - x - 3)
    if keys:
        x = put(c, x, y, " │ ", theme.footer)
        for k, label in keys:
            x = put(c, x, y, k, theme.footer_key)
            x = put(c, x, y, (f" {label} " if label else " "), theme.footer)
    if hint:
        put(c, width - text_width(hint) - 1, y, hint, theme.footer)
    if height > 1 and alert:
        put(c, 1, 0, "! " + str(alert), theme.alert)
    return c


def _fit(room: int):
    """The most informative (keys, reset hint) pair that fits in `room` cells."""
    for keys, hint in ((KEYS_LONG, RESET_HINTS[0]), (KEYS_LONG, RESET_HINTS[1]), (KEYS_SHORT, RESET_HINTS[0]),
                       (KEYS_SHORT, RESET_HINTS[1]), (KEYS_TINY, RESET_HINTS[1]), (KEYS_SHORT, None), ((), RESET_HINTS[1]), ((), None)):
        need = (_keys_width(keys) if keys else 0) + (text_width(hint) + 2 if hint else 0)
        if need <= room:
            return keys, hint
    return (), None


def _parts_width(parts) -> int:
    """Cells the status parts take, as render puts them (" " first, SEP between)."""
    return sum(text_width((SEP if i else " ") + p) for i, p in enumerate(parts))


def _keys_width(keys) -> int:
    return sum(text_width(k) + (len(label) + 2 if label else 1) for k, label in keys)
