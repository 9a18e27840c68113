"""Imports run one way. Read from the source (ast), function-local imports and
`importlib.import_module("...")` included (docs/architecture.md says why):

- layers, bottom up: errors (imports nothing), instrument and envs; models and utils;
  core, plan and analyze. No module imports one from a higher layer;
- the vlmrl import graph has no cycle;
- nothing under vlmrl/utils, vlmrl/instrument or vlmrl/analyze imports JAX (jax, jaxlib, flax, optax,
  orbax), directly or through another vlmrl module, except the device side of the taps:
  `instrument.taps` and `instrument.tap_callback` run inside traced programs and import
  JAX by design. The host side (events, bus, record, tap_host) and the whole dashboard
  must run, and `--attach` a log, on a machine without JAX.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Optional, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "vlmrl")

LAYERS = {"errors": 0, "instrument": 0, "envs": 0, "models": 1, "utils": 1, "core": 2, "plan": 2, "analyze": 2}
JAX_ROOTS = {"jax", "jaxlib", "flax", "optax", "orbax"}
NO_JAX = ("vlmrl.utils", "vlmrl.instrument", "vlmrl.analyze")
DEVICE_SIDE = {"vlmrl.instrument.taps", "vlmrl.instrument.tap_callback"}


def module_names(pkg_dir: str = PKG) -> Dict[str, str]:
    """{dotted module name: file path} for every .py under the package."""
    out = {}
    base = os.path.dirname(pkg_dir)
    for dirpath, _dirs, files in os.walk(pkg_dir):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            parts = os.path.relpath(path, base)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _literal_prefix(node: ast.AST) -> Optional[str]:
    """The module named by import_module's argument: a string, or an f-string's leading
    constant up to its last dot (f"pkg.panels.{mode}" -> "pkg.panels")."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        head = str(node.values[0].value)
        return head.rsplit(".", 1)[0] if "." in head else None
    return None


def imports_of(module: str, source: str, is_package: bool) -> Set[str]:
    """Every module name this source imports, anywhere in it (absolute, dotted)."""
    out: Set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)  # kept only when a module
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if name in ("import_module", "__import__"):
                target = _literal_prefix(node.args[0])
                if target:
                    out.add(target)
    return out


def build_graph(modules: Dict[str, str]) -> Dict[str, Set[str]]:
    """{module: imported names}: vlmrl modules (`from pkg import mod` resolves to the
    module) plus the top-level names of everything outside vlmrl."""
    graph = {}
    for mod, path in modules.items():
        with open(path, encoding="utf-8") as fh:
            names = imports_of(mod, fh.read(), path.endswith("__init__.py"))
        edges = set()
        for name in names:
            if name.split(".")[0] != "vlmrl":
                edges.add(name.split(".")[0])
            elif name in modules:
                edges.add(name)
        edges.discard(mod)
        graph[mod] = edges
    return graph


def layer_of(module: str) -> Optional[int]:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def upward_imports(graph: Dict[str, Set[str]]) -> List[str]:
    bad = []
    for mod, edges in sorted(graph.items()):
        lo = layer_of(mod)
        for target in sorted(edges):
            hi = layer_of(target) if target.startswith("vlmrl.") else None
            if lo is not None and hi is not None and hi > lo:
                bad.append(f"{mod} -> {target}")
    return bad


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle among the vlmrl modules as a path [a, b, ..., a], or None."""
    state: Dict[str, int] = {}  # 1 on the stack, 2 done
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue  # outside vlmrl
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def jax_paths(graph: Dict[str, Set[str]], exempt=DEVICE_SIDE) -> List[str]:
    """For each no-JAX module that reaches JAX: the chain of imports that gets there."""
    bad = []
    for start in sorted(m for m in graph if m.startswith(NO_JAX) and m not in exempt):
        seen, frontier = {start: [start]}, [start]
        hit = None
        while frontier and hit is None:
            nxt_frontier = []
            for node in frontier:
                for target in sorted(graph.get(node, ())):
                    if target in JAX_ROOTS:
                        hit = seen[node] + [target]
                        break
                    if target in graph and target not in seen and target not in exempt:
                        seen[target] = seen[node] + [target]
                        nxt_frontier.append(target)
                if hit:
                    break
            frontier = nxt_frontier
        if hit:
            bad.append(" -> ".join(hit))
    return bad


@pytest.fixture(scope="module")
def graph():
    return build_graph(module_names())


def test_the_graph_is_read_from_the_source(graph):
    assert "vlmrl.core.train" in graph and "vlmrl.utils.tui_live" in graph
    assert "jax" in graph["vlmrl.instrument.taps"]  # the device side is seen importing JAX
    # function-local imports count: tui_live imports the CLI only inside main()
    assert "vlmrl.utils.tui.cli" in graph["vlmrl.utils.tui_live"]
    # import_module with an f-string counts as the package it names
    assert "vlmrl.utils.tui.panels" in graph["vlmrl.utils.tui.view"]


def test_no_module_imports_a_higher_layer(graph):
    assert upward_imports(graph) == []


def test_the_import_graph_has_no_cycle(graph):
    assert find_cycle(graph) is None


def test_the_dashboard_and_the_host_side_of_the_taps_never_reach_jax(graph):
    assert jax_paths(graph) == []


def test_every_subpackage_has_a_layer(graph):
    subs = {m.split(".")[1] for m in graph if m.count(".") >= 1}
    assert subs <= set(LAYERS), subs - set(LAYERS)


# The checks themselves must be able to fail: each one on a graph made to break it.

def test_checks_catch_a_cycle_an_upward_import_and_a_jax_import(tmp_path):
    pkg = tmp_path / "vlmrl"
    for sub in ("utils", "core", "instrument"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "utils" / "view.py").write_text("def f():\n    from vlmrl.utils import cli\n")
    (pkg / "utils" / "cli.py").write_text("import importlib\n"
                                          "def g():\n    importlib.import_module('vlmrl.core.train')\n")
    (pkg / "core" / "train.py").write_text("from ..utils import view\n")
    (pkg / "instrument" / "bus.py").write_text("from . import helper\n")
    (pkg / "instrument" / "helper.py").write_text("def h():\n    import jax.numpy\n")
    g = build_graph(module_names(str(pkg)))
    assert upward_imports(g) == ["vlmrl.utils.cli -> vlmrl.core.train"]
    cycle = find_cycle(g)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {
        "vlmrl.utils.view", "vlmrl.utils.cli", "vlmrl.core.train"}
    assert jax_paths(g, exempt=set()) == ["vlmrl.instrument.bus -> vlmrl.instrument.helper -> jax",
                                          "vlmrl.instrument.helper -> jax"]
    assert jax_paths(g, exempt={"vlmrl.instrument.helper"}) == []
