"""JAX's persistent compilation cache, on by default for every run.

A run compiles its sampler (prefill + decode loop) and PPO update before the first step,
18-45 s on a 2-core CPU for the tiny model. With the compiled executables kept on disk
(keyed by JAX on the program, its shapes, the JAX version and the device), a second
identical run loads them instead (figures in the README). Every compilation is kept, not
only the slow ones (JAX's default skips those under 1 s): a run makes a few dozen small
ones that add up to seconds, and together they stay a few MiB.
"""
from __future__ import annotations

import os
import threading
from typing import Optional

MAX_BYTES = 2 << 30  # the cache evicts its least recently used entries beyond this

_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}


class CacheCounts:
    """How many compilations this process found in the cache (hits) or had to compile (misses)."""

    def __init__(self):
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def on_event(self, event: str, **_kw) -> None:
        name = _EVENTS.get(event)
        if name is not None:
            with self._lock:
                setattr(self, name, getattr(self, name) + 1)

    def summary(self) -> str:
        return f"{self.hits} loaded, {self.misses} compiled"

    def close(self) -> None:
        """Stop counting (the listener is process-wide)."""
        import jax

        jax.monitoring.unregister_event_listener(self.on_event)


def default_dir() -> str:
    """$XDG_CACHE_HOME/vlmrl/jax, or ~/.cache/vlmrl/jax when XDG_CACHE_HOME is unset or relative."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore a relative path
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vlmrl", "jax")


def enable(directory: Optional[str] = None) -> tuple:
    """Point JAX's persistent compilation cache at `directory` (default `default_dir()`).

    Call before the first compilation of the process: JAX decides once whether a process
    uses the cache. Returns (directory, CacheCounts), or (None, None) with the reason
    printed when the directory cannot be made (the run then compiles as without a cache).
    """
    import jax

    directory = directory or default_dir()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        print(f"note: no compilation cache ({exc}); every run compiles afresh", flush=True)
        return None, None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    counts = CacheCounts()
    jax.monitoring.register_event_listener(counts.on_event)
    return directory, counts
