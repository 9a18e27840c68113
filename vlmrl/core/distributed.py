"""Runs over several processes (hosts) on JAX's own engine: `jax.distributed.initialize`.

Every process runs the same program on the same flags (single program, multiple data):
the same seeds give every process the same prompts, images and sampling keys, the
global arrays are built from that host data (each process transfers only the shards its
own devices hold), and values a host needs back (tokens, rewards, per-token arrays) are
gathered from all processes (`to_host`), so the rewards and every host-side decision
agree across processes. Only process 0 renders the dashboard, prints progress and writes
the log; the others publish to a bus nobody reads.

How a run finds its peers, in order:
  1. `--coordinator HOST:PORT --num_processes N --process_id I` (all three);
  2. else, when the environment says this is one process of several (JAX_COORDINATOR_ADDRESS,
     a Slurm step or an Open MPI job of more than one task, a multi-host Cloud TPU), JAX's
     own detection fills in what is missing;
  3. else a single process: nothing is initialized.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Optional

import jax
import numpy as np

from vlmrl.errors import UsageError

# Environment variables that mean "one process of several", and how many tasks each names
# (JAX_COORDINATOR_ADDRESS alone is enough: JAX's cluster detection supplies the rest).
_TASK_COUNTS = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")


def cluster_environment(environ=None) -> str:
    """Why this process looks like one of several ("" when it does not): the variable that says so."""
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    for name in _TASK_COUNTS:
        try:
            if int(env.get(name, "1")) > 1:
                return name
        except ValueError:
            continue
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):  # a multi-host TPU slice
        return "TPU_WORKER_HOSTNAMES"
    return ""


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, timeout_s: int = 300) -> tuple:
    """Join the run's processes (see the module doc); returns (process index, process count).

    Call it before anything else touches JAX (the backend must not exist yet). A second
    call in the same process returns what the first one set up. A failure to reach the
    coordinator within `timeout_s` is a UsageError naming the address.
    """
    explicit = coordinator is not None
    detected = "" if explicit else cluster_environment()
    if jax.distributed.is_initialized() or not (explicit or detected):
        return jax.process_index(), jax.process_count()
    # CPU processes exchange collectives over gloo (XLA's CPU default has none across processes)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = f"{coordinator} as process {process_id} of {num_processes}" if explicit else f"the run ({detected})"
    if explicit:
        _check_coordinator(coordinator, process_id, timeout_s, where)
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    except Exception as exc:  # jaxlib raises its own runtime error types
        text = str(exc).strip().splitlines()
        raise UsageError(f"cannot join {where}: {type(exc).__name__}: {text[0][:200] if text else ''}") from None
    return jax.process_index(), jax.process_count()


def _check_coordinator(coordinator: str, process_id: int, timeout_s: float, where: str) -> None:
    """What JAX's client would otherwise abort the process on (SIGABRT and a C++ stack, no
    Python exception): process 0's port already taken, or no coordinator answering the
    others within `timeout_s`. Checked first so that the user reads one line."""
    host, _, port = coordinator.rpartition(":")
    host = host.strip("[]")
    if process_id == 0:
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("", int(port)))
        except OSError as exc:
            raise UsageError(f"cannot join {where}: port {port} is not free here ({exc.strerror or exc})") from None
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise UsageError(f"cannot join {where}: no coordinator answered within {timeout_s:.0f} s "
                                 f"({exc.strerror or exc})") from None
            time.sleep(0.5)


def to_host(x) -> np.ndarray:
    """A numpy copy of a (possibly sharded, possibly multi-process) array, the same on every
    process. Every process must call it for the same array: gathering across processes is
    a collective."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def host_tree(tree):
    """`to_host` over every leaf of a tree."""
    return jax.tree_util.tree_map(to_host, tree)


def broadcast_flag(flag: bool) -> bool:
    """Process 0's value of a host-side yes/no on every process, for decisions made from
    clocks (which differ between processes) that pick which program runs next."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))
