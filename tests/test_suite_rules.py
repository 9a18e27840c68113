"""How the test suite itself is put together: a test module imports shared helpers only
from conftest.py, never from another test module or a helper module directly, so every
test file can be read (and run) on its own."""
from __future__ import annotations

import ast
import pathlib

TESTS = pathlib.Path(__file__).parent
HELPERS = {"hf_oracle", "fake_qwen", "analyze_oracle", "rl_views_checks"}  # conftest.py's own helper modules


def _local_imports(path: pathlib.Path):
    local = {p.stem for p in TESTS.glob("*.py")}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module.split(".")[0]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        else:
            continue
        yield from (n for n in names if n in local)


def test_test_modules_import_shared_helpers_only_from_conftest():
    bad = {}
    for path in sorted(TESTS.glob("test_*.py")):
        wrong = sorted(set(_local_imports(path)) - {"conftest"})
        if wrong:
            bad[path.name] = wrong
    assert bad == {}


def test_helper_modules_are_not_collected_as_tests():
    assert all((TESTS / f"{name}.py").exists() for name in HELPERS)
    assert not any(p.stem.startswith("test_") for p in TESTS.glob("*.py") if p.stem in HELPERS)
