"""Helpers for tests that run a command as a user would: a child Python under a memory cap,
and the check that a failure reached the user as one line and exit 2. Imported through
conftest.py."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_limited(code: str, limit_mb: int, timeout: float = 120.0, args=()):
    """Run `code` in a child Python whose address space is capped at `limit_mb`: a reader
    that buffers what it should stream gets MemoryError there, not swap here."""
    env = dict(os.environ, PYTHONPATH=REPO, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    limit = limit_mb << 20

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, preexec_fn=cap,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_exit_2(proc, *needles) -> None:
    """A command failed as a user should see it: exit 2, one line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
