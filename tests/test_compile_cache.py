"""The persistent compilation cache: on by default under $XDG_CACHE_HOME/vlmrl, off with a
flag, and a second identical process loads what the first compiled. Checked by JAX's own
cache hit/miss events and the files on disk, never by wall-clock time."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vlmrl.core import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = ("import sys\n"
         "from vlmrl.core import compile_cache\n"
         "d, counts = compile_cache.enable(sys.argv[1])\n"
         "import jax, jax.numpy as jnp\n"
         "jax.jit(lambda x: jnp.sin(x) * 3 + 1)(jnp.ones(7)).block_until_ready()\n"
         "print('COUNTS', counts.hits, counts.misses)\n")


def _files(d) -> set:
    return {os.path.join(root, f) for root, _, files in os.walk(d) for f in files}


def _probe(cache_dir) -> tuple:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(cache_dir)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("COUNTS"))
    hits, misses = (int(v) for v in line.split()[1:])
    return hits, misses


def test_default_dir_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_dir() == os.path.join(str(tmp_path), "vlmrl", "jax")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: ignore a relative path
    assert compile_cache.default_dir() == os.path.join(os.path.expanduser("~"), ".cache", "vlmrl", "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache.default_dir() == os.path.join(os.path.expanduser("~"), ".cache", "vlmrl", "jax")


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    d = tmp_path / "cache"
    hits, misses = _probe(d)
    assert hits == 0 and misses >= 1
    written = _files(d)
    assert written  # the compiled program is on disk
    hits, misses = _probe(d)
    assert hits >= 1 and misses == 0
    assert _files(d) >= written


@pytest.mark.slow
def test_train_uses_the_cache_by_default_and_not_with_the_flag(tmp_path):
    """Two identical `train` runs: the second compiles nothing; --no_compile_cache writes nothing."""
    env = dict(os.environ, PYTHONPATH=ROOT, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    flags = ["--steps", "1", "--batch", "2", "--group", "2", "--minibatches", "1"]

    def train(*extra):
        proc = subprocess.run([sys.executable, "-m", "vlmrl.core.train", *flags, *extra], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    default = tmp_path / "xdg" / "vlmrl" / "jax"
    first = train()
    assert "compilations: 0 loaded," in first and _files(default)
    entries = _files(default)
    second = train()
    assert ", 0 compiled)" in second and "(compilations: 0 loaded" not in second
    assert _files(default) == entries  # everything was found: nothing new written
    off = tmp_path / "off"
    third = train("--no_compile_cache", "--compile_cache", str(off))
    assert "compilations:" not in third and not off.exists()
