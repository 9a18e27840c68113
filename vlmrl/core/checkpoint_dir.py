"""The directory a run's checkpoints live in (`--ckpt DIR`): its marker, its steps, and the
checks of everything in it that is not an array (every byte of it is untrusted).

A run writes, and lets orbax prune, only in a directory that is absent, empty or marked
as vlmrl's; orbax's own per-step metadata must be whole before a restore or a save.
"""
from __future__ import annotations

import json
import os
import re
from typing import Optional

import jax

MARKER = "vlmrl-checkpoints.json"
MARKER_CONTENT = {"format": "vlmrl orbax checkpoints", "version": 1}
MARKER_MAX = 4096  # bytes: the marker is 50
META_MAX = 1 << 20  # bytes: the step's JSON is a few hundred
METADATA_MAX = 256 << 20  # bytes of orbax's own metadata files of a step (one entry per array)
WALK_MAX = 200_000  # entries of a step directory we look at before giving up
_STEP = re.compile(r"\d{1,12}")


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored or written: not our directory, malformed JSON,
    a link, arrays that do not fit the model, a store orbax cannot read. One line for the user."""


# ---- the directory --------------------------------------------------------------------------

def check_directory(directory: str) -> None:
    """CheckpointError unless `directory` is absent, empty, or marked as ours: a run must
    never write (or let orbax prune) inside someone else's directory. The marker is
    required and must hold exactly what `claim` writes."""
    if not os.path.exists(directory):
        return
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} is not a directory")
    entries = os.listdir(directory)
    if MARKER in entries:
        _check_marker(os.path.join(directory, MARKER))
        return
    if not entries or MARKER + ".tmp" in entries:  # (.tmp: process 0 is marking it now)
        return
    if "latest.json" in entries:
        raise CheckpointError(f"{directory} holds checkpoints of the older .npz format, which this version "
                              f"cannot read; pick another --ckpt directory")
    raise CheckpointError(f"{directory} is not empty and is not a vlmrl checkpoint directory (no {MARKER}); "
                          f"pick another --ckpt directory")


def _check_marker(path: str) -> None:
    problem = ""
    if os.path.islink(path) or not os.path.isfile(path):
        problem = "is not a plain file"
    else:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MARKER_MAX + 1)
            if json.loads(raw) != MARKER_CONTENT:
                problem = "does not hold the vlmrl marker"
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
        except (ValueError, RecursionError):
            problem = "is not the vlmrl marker (not valid JSON)"
    if problem:
        raise CheckpointError(f"checkpoint directory marker {path} {problem}: the directory is damaged "
                              f"or not vlmrl's; pick another --ckpt directory")


def steps(directory: str) -> list:
    """The finished checkpoint steps in `directory`, oldest first (orbax's temporary
    directories of an unfinished save are not steps)."""
    check_directory(directory)
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if _STEP.fullmatch(name) and os.path.isdir(path) and not os.path.islink(path):
            found.append(int(name))
    return sorted(found)


def latest_step(directory: str) -> Optional[int]:
    """The newest checkpoint step in `directory`, or None when there is none."""
    found = steps(directory)
    return found[-1] if found else None


def claim(directory: str) -> None:
    """Check `directory` and mark it as ours (process 0 only; the others follow it), before
    the run writes anything there."""
    check_directory(directory)
    path = os.path.join(directory, MARKER)
    if jax.process_index() != 0 or os.path.exists(path):
        return
    try:
        os.makedirs(directory, exist_ok=True)
        with open(path + ".tmp", "w") as fh:
            json.dump(MARKER_CONTENT, fh)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        raise CheckpointError(f"cannot write in checkpoint directory {directory}: {exc.strerror or exc}") from None


def check_orbax_metadata(directory: str) -> None:
    """Every finished step holds orbax's `_CHECKPOINT_METADATA` (a JSON object orbax writes
    with each save and reads for every step whenever it opens the directory). Missing or
    garbled, orbax only logs and goes on, so it is checked here: one CheckpointError
    instead of absl log lines and a resume from a step nobody can vouch for."""
    for step in steps(directory):
        path = os.path.join(directory, str(step), "_CHECKPOINT_METADATA")
        try:
            with open(path, "rb") as fh:
                raw = fh.read(META_MAX + 1)
        except OSError as exc:
            raise CheckpointError(f"checkpoint {os.path.dirname(path)} is damaged: orbax's step metadata "
                                  f"_CHECKPOINT_METADATA cannot be read ({exc.strerror or exc})") from None
        try:
            ok = len(raw) <= META_MAX and isinstance(json.loads(raw), dict)
        except (ValueError, RecursionError):
            ok = False
        if not ok:
            raise CheckpointError(f"checkpoint {os.path.dirname(path)} is damaged: orbax's step metadata "
                                  f"_CHECKPOINT_METADATA is not a JSON object of at most {META_MAX} bytes")
