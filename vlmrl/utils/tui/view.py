"""UI state (what the user chose to look at) and the key bindings that change it.

`ViewState` is frozen; `handle_key` returns a new one, so the render thread can compare
views and panels can cache on the fields they read. `q` (leave the dashboard) belongs to
the live loop and is not handled here. In the matrix and explorer modes every key this
module does not own is forwarded to REPLAY's panel (`panels.matrix` / `panels.explorer`).
"""
from __future__ import annotations

import dataclasses
import importlib
from types import MappingProxyType
from typing import Any, Mapping, Optional

from vlmrl.instrument.events import ATTN_STATS

MODES = ("dashboard", "matrix", "explorer", "charts", "group", "plan", "updates", "image")
# Keys that open (and close) a view. m, e, u and v work everywhere; c, g and k work from the
# dashboard and the views with no keys of their own for those letters (SHARED_KEY_MODES),
# since the matrix, the explorer and the update view use g as Home and k as up.
MODE_KEYS = MappingProxyType({"m": "matrix", "e": "explorer", "c": "charts", "g": "group", "k": "plan",
                              "u": "updates", "v": "image"})
RL_MODES = ("dashboard", "charts", "group", "plan")
# The views whose own keys leave every mode letter and --replay's keys (← → h l Home End G
# space + -) free: there c g k switch views and the replay keys step the run. The image view
# is one (its keys: [ ] a ↑ ↓ o n; no vim k/j, k is the memory plan).
SHARED_KEY_MODES = RL_MODES + ("image",)
ESCAPE_KEYS = ("\x1b", "escape", "KEY_ESCAPE")

# Key help shown in the help overlay: (key, what it does). What `q` does depends on what
# is shown (a live run goes on; a log viewer just ends): `layout.help_lines` says it.
KEY_HELP = (
    ("q", "leave"),
    ("p", "pause / resume the display"),
    ("[ ]", "page attention layers"),
    ("s S", "next / previous heatmap stat (focus/max/vision/sink)"),
    ("b B", "next / previous batch element"),
    ("m", "attention matrix view"),
    ("e", "token attention explorer"),
    ("c", "training charts (s: EMA smoothing)"),
    ("g", "rollout group ([ ] prompt, s metric)"),
    ("k", "memory plan vs what the run measures"),
    ("u", "update view: what each PPO update moved"),
    ("v", "image view ([ ] layer, a all layers, ↑↓ token, o overlay, n next image)"),
    ("?", "this help"),
)
# --replay's own keys (`replay.ReplayLog.handle_key`).
REPLAY_KEY_HELP = (
    ("← →", "step back / forward (h l too)"),
    ("Home End", "first / last step (G too; g is the group view)"),
    ("space", "play / pause"),
    ("+ -", "faster / slower"),
)


@dataclasses.dataclass(frozen=True)
class ViewState:
    paused: bool = False
    stat_index: int = 0  # into ATTN_STATS
    # Heatmap page, 0 = the last (deepest) layers; `[` goes to earlier layers. Rendered
    # modulo the page count, which depends on the rows the layout gives the heatmap.
    layer_page: int = 0
    batch_index: int = 0
    show_help: bool = False
    mode: str = "dashboard"
    flash_hz: float = 5.0
    display_layers: int = 6
    # Replay position (event index) when driving the view from a recording; None: live.
    replay_pos: Optional[int] = None
    # Opaque per-mode state owned by REPLAY's panels, e.g. {"matrix": ..., "explorer": ...}.
    mode_state: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def stat(self) -> str:
        return ATTN_STATS[self.stat_index % len(ATTN_STATS)]

    def flash_on(self, now: float) -> bool:
        """Flash phase: on for half of each 1/flash_hz period (off when flash_hz <= 0)."""
        if self.flash_hz <= 0:
            return True
        return int(now * self.flash_hz * 2.0) % 2 == 0

    def heat_flash_on(self, now: float) -> bool:
        """Flash phase of the hot heatmap heads: half the rate of `flash_on`, one toggle
        per 1/flash_hz, so at the default 5 Hz every toggle lands on a heatmap refresh
        tick (store.HEAT_HZ) and a flash never costs a frame of its own."""
        if self.flash_hz <= 0:
            return True
        return int(now * self.flash_hz) % 2 == 0

    def replace(self, **changes) -> "ViewState":
        return dataclasses.replace(self, **changes)


def _mode_module(mode: str):
    """REPLAY's panel module for a mode, or None when it is not there (yet)."""
    try:
        return importlib.import_module(f"vlmrl.utils.tui.panels.{mode}")
    except ImportError:
        return None


def handle_key(view: ViewState, key: str, state=None, cache=None) -> ViewState:
    """The view after one key press. Unknown keys leave it unchanged.

    Args:
      view: the current view.
      key: one key as the terminal layer reports it ("p", "[", "?", "KEY_ESCAPE", ...).
      state: the current DashboardState (batch size for `b`; passed on to REPLAY's keys).
      cache: the dashboard's RenderCache, passed on to a mode's keys: a mode panel's
        `handle_key(view, key, state, cache)` (the explorer reads its processed rows there).
    Returns:
      the new ViewState.
    """
    if not isinstance(key, str) or not key:
        return view
    if key == "?":
        return view.replace(show_help=not view.show_help)
    if view.show_help and key in ESCAPE_KEYS:
        return view.replace(show_help=False)
    if key == "p":
        return view.replace(paused=not view.paused)
    mode = MODE_KEYS.get(key)
    if mode is not None and (key in "meuv" or view.mode in SHARED_KEY_MODES):
        return view.replace(mode="dashboard" if view.mode == mode else mode)
    if view.mode != "dashboard":
        if key in ESCAPE_KEYS:
            return view.replace(mode="dashboard")
        mod = _mode_module(view.mode)
        handler = getattr(mod, "handle_key", None)
        if handler is None:
            return view
        out = handler(view, key, state, cache)
        return out if isinstance(out, ViewState) else view
    return _dashboard_key(view, key, state)


def _dashboard_key(view: ViewState, key: str, state) -> ViewState:
    if key == "s":
        return view.replace(stat_index=(view.stat_index + 1) % len(ATTN_STATS))
    if key == "S":
        return view.replace(stat_index=(view.stat_index - 1) % len(ATTN_STATS))
    if key == "[":
        return view.replace(layer_page=view.layer_page + 1)
    if key == "]":
        return view.replace(layer_page=view.layer_page - 1)
    if key == "b":
        n = state.batch_size() if state is not None else 1
        return view.replace(batch_index=(view.batch_index + 1) % max(n, 1))
    if key == "B":
        n = state.batch_size() if state is not None else 1
        return view.replace(batch_index=(view.batch_index - 1) % max(n, 1))
    return view
