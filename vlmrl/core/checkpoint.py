"""Training checkpoints: params, optimizer state, step and RNG key as .npz + a JSON manifest.

Layout of a checkpoint directory:
  step_000050.npz   every array leaf, keyed "params/<path>" and "opt/<path>"
  latest.json       {"step": 50, "file": "step_000050.npz", "rng": [...], "meta": {...}}
Both are written to a temporary name and renamed into place (atomic on POSIX), and the
manifest goes last: a run killed mid-save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np

MANIFEST = "latest.json"


def _flatten(prefix: str, tree) -> dict:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[prefix + jax.tree_util.keystr(path)] = np.asarray(jax.device_get(leaf))
    return out


def _atomic_write(path: str, write) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save(directory: str, step: int, params, opt_state, rng, meta: Optional[dict] = None, keep: int = 2) -> str:
    """Write a checkpoint for `step`; keeps the newest `keep` array files. Returns the .npz path."""
    os.makedirs(directory, exist_ok=True)
    arrays = {**_flatten("params", params), **_flatten("opt", opt_state)}
    name = f"step_{step:06d}.npz"
    path = os.path.join(directory, name)
    _atomic_write(path, lambda fh: np.savez(fh, **arrays))
    manifest = {"step": int(step), "file": name, "rng": np.asarray(jax.device_get(rng)).tolist(),
                "meta": meta or {}}
    _atomic_write(os.path.join(directory, MANIFEST), lambda fh: fh.write(json.dumps(manifest, indent=1).encode()))
    old = sorted(f for f in os.listdir(directory) if f.startswith("step_") and f.endswith(".npz"))
    for f in old[:-keep] if keep > 0 else []:
        if f != name:
            os.remove(os.path.join(directory, f))
    return path


def read_manifest(directory: str) -> Optional[dict]:
    """The manifest of the newest checkpoint in `directory`, or None when there is none."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"checkpoint manifest {path} is not valid JSON: {exc}") from None


def _fill(prefix: str, template, arrays, problems: list):
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, leaf in leaves_with_path:
        key = prefix + jax.tree_util.keystr(path)
        if key not in arrays:
            problems.append(f"missing {key}")
            out.append(leaf)
            continue
        value = arrays[key]
        want = tuple(np.shape(leaf))
        if value.shape != want:
            problems.append(f"{key} has shape {list(value.shape)}, the model expects {list(want)}")
            out.append(leaf)
            continue
        out.append(jax.numpy.asarray(value, dtype=np.asarray(leaf).dtype if hasattr(leaf, "dtype") else None))
    return jax.tree_util.tree_unflatten(treedef, out)


def restore(directory: str, params_template, opt_template) -> tuple:
    """(step, params, opt_state, rng, meta) from the newest checkpoint in `directory`.

    The templates give the pytree structure (a freshly built model and optimizer state);
    every missing or mis-shaped array is named in one ValueError.
    """
    manifest = read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"no checkpoint in {directory} (no {MANIFEST})")
    path = os.path.join(directory, manifest["file"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint manifest names {manifest['file']} but {path} does not exist")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    problems: list = []
    params = _fill("params", params_template, arrays, problems)
    opt_state = _fill("opt", opt_template, arrays, problems)
    if problems:
        raise ValueError(f"checkpoint {path} does not fit this model: " + "; ".join(problems))
    rng = np.asarray(manifest["rng"], dtype=np.uint32)
    return int(manifest["step"]), params, opt_state, rng, manifest.get("meta", {})


def tree_equal(a: Any, b: Any) -> bool:
    """Exact equality of two pytrees of arrays (tests and resume checks)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))
