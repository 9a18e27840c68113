"""The dashboard's drawing code keeps no state at module level: what a frame leaves for
the next lives on the RenderCache the LiveTUI owns (see vlmrl/utils/tui/render_cache.py).

A module-level dict, list, set, deque or counter, or an instance of one of our own classes,
is state that outlives a dashboard and is shared by every dashboard in the process.
Constants are frozen (tuples, frozensets, MappingProxyType); memos of pure functions use
functools.lru_cache (a function, so not flagged here).
"""
from __future__ import annotations

import collections
import importlib
import itertools
import pkgutil
import types

import vlmrl.utils.tui as tui_pkg
from vlmrl.utils.tui.palette import Palette

MUTABLE = (dict, list, set, bytearray, collections.deque, collections.OrderedDict, itertools.count)
# Palettes are style constants: built once at import, never written afterwards.
ALLOWED = (Palette,)


def _modules():
    names = ["vlmrl.utils.tui_live"]
    names += [m.name for m in pkgutil.walk_packages(tui_pkg.__path__, "vlmrl.utils.tui.")]
    return [importlib.import_module(n) for n in names]


def _stateful_globals(module):
    out = []
    for name, value in vars(module).items():
        if name.startswith("__") or isinstance(value, (types.ModuleType, type, types.FunctionType)):
            continue
        if isinstance(value, ALLOWED):
            continue
        ours = type(value).__module__.startswith("vlmrl.") and hasattr(value, "__dict__")
        if isinstance(value, MUTABLE) or ours:
            out.append(f"{module.__name__}.{name} ({type(value).__name__})")
    return out


def test_no_module_level_mutable_state_in_the_dashboard():
    found = [g for m in _modules() for g in _stateful_globals(m)]
    assert found == []


def test_the_scan_sees_module_state():
    fake = types.ModuleType("vlmrl.utils.tui.fake")
    fake.MEMO = {}
    fake.CONST = (1, 2)
    assert _stateful_globals(fake) == ["vlmrl.utils.tui.fake.MEMO (dict)"]
