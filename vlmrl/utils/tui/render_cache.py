"""What the dashboard remembers from one frame to the next, in one object it owns.

Panels are pure functions of (snapshot, rectangle, theme, clock): the module that draws
them keeps no state. What makes a frame cheap (rows drawn once and shared, the last
canvas of every panel, the last screen) lives on a `RenderCache` instead: `LiveTUI`
makes one per dashboard and hands it to `layout.render_screen`, which hands it to every
panel as the last argument of `render(state, view, width, height, now, theme, cache)`.
A render with no cache (tests, one-off mockups) gets a fresh one: the same screen, drawn cold.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple


class RenderCache:
    """Memos that outlive one frame, by name, plus the layout's last canvases and screen.

    How a new panel gets its cache:
      - `cache.memo("mypanel.rows")` is a dict that lives as long as the dashboard;
        `cache.memo("mypanel.rows", RowCache)` makes another container on first use.
        Name memos "<panel>.<what>" so two panels never share one by accident.
      - Bound what grows: store with `common.remember(memo, key, value, limit)`, which
        clears the memo when full (or use a RowCache / LRUCache with its own limit).
      - Key a value on everything it depends on (width, `id(theme)`, the figures shown),
        never on arrival order or wall time.
      - Store immutable values. A cached row is a pair of tuples (chars, styles): a canvas
        may hold it as its own row (`share_row`), several canvases may hold the same one,
        and a write into it fails loudly instead of changing other frames.
      - `functools.lru_cache` stays fine for a pure function of hashable arguments that
        returns an immutable value (sanitize, widths, glyph strings); anything that
        remembers a previous frame or holds rows belongs here.
    """

    def __init__(self) -> None:
        self._memos: Dict[str, Any] = {}
        # layout: (key, canvas) of each panel's last render, and the last whole screen
        self.panels: Dict[str, Tuple[tuple, Any]] = {}
        self.screen: Optional[Tuple[tuple, Any]] = None
        # (recipe, panel canvases, screen) of the last assembled dashboard: rows whose
        # panels all kept their canvas are shared with the new screen instead of rebuilt
        self.last: Optional[tuple] = None

    def memo(self, name: str, factory: Callable[[], Any] = dict):
        """The container called `name`, made by `factory()` on first use."""
        hit = self._memos.get(name)
        if hit is None:
            hit = self._memos[name] = factory()
        return hit

    def clear(self) -> None:
        """Forget everything (the next frame is drawn cold)."""
        self.__init__()
