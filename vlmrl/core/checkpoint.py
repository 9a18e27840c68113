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
import re
import zipfile
from typing import Optional

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


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored: a malformed manifest, a path outside the
    directory, arrays that do not fit the model. One line for the user."""


MANIFEST_MAX = 1 << 20  # bytes: a manifest is a few hundred
_ARRAY_FILE = re.compile(r"step_\d{6,12}\.npz")


def read_manifest(directory: str) -> Optional[dict]:
    """The checked manifest of the newest checkpoint in `directory`, or None when there is
    none. CheckpointError when it is malformed or names a file outside `directory`."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MANIFEST_MAX + 1)
    except OSError as exc:
        raise CheckpointError(f"checkpoint manifest {path}: {exc.strerror or exc}") from None
    if len(raw) > MANIFEST_MAX:
        raise CheckpointError(f"checkpoint manifest {path} is larger than {MANIFEST_MAX} bytes")
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint manifest {path} is not valid JSON: {exc}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise CheckpointError(f"checkpoint manifest {path}: {problem}")
    return manifest


def _manifest_problem(m) -> str:
    if not isinstance(m, dict):
        return "not a JSON object"
    step, file, rng, meta = m.get("step"), m.get("file"), m.get("rng"), m.get("meta", {})
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 1 << 40:
        return f"step {step!r} is not a step number"
    # only a bare file name this module writes: never a path that leaves the directory
    if not isinstance(file, str) or not _ARRAY_FILE.fullmatch(file):
        return f"file {str(file)[:80]!r} is not a checkpoint file name (step_NNNNNN.npz in the same directory)"
    if not (isinstance(rng, list) and 0 < len(rng) <= 64
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 32 for x in rng)):
        return "rng is not a list of uint32 words"
    if not isinstance(meta, dict):
        return "meta is not a JSON object"
    return ""


def _check_member(zf: zipfile.ZipFile, name: str, want: tuple) -> str:
    """Why the .npy member `name` cannot be `want`-shaped numbers, read from its header
    alone (nothing is allocated from a declared size), or ""."""
    info = zf.getinfo(name)
    with zf.open(info) as fp:
        try:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                return f"unsupported .npy version {version}"
            data_offset = fp.tell()
        except (ValueError, OSError) as exc:
            return f"unreadable array header ({exc})"
    if dtype.kind not in "biuf" or dtype.hasobject:
        return f"dtype {dtype} is not numeric"
    if tuple(shape) != want:
        return f"has shape {list(shape)}, the model expects {list(want)}"
    if info.file_size - data_offset < int(np.prod(want, dtype=np.int64)) * dtype.itemsize:
        return "is shorter than its declared shape (truncated file)"
    return ""


def _load_arrays(path: str, templates: dict, problems: list) -> dict:
    """{key: array} for every key of `templates` ({key: shape}) whose member checks out."""
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            for key, want in templates.items():
                name = key + ".npy"
                if name not in members:
                    problems.append(f"missing {key}")
                    continue
                why = _check_member(zf, name, want)
                if why:
                    problems.append(f"{key} {why}")
                    continue
                with zf.open(name) as fp:
                    out[key] = np.lib.format.read_array(fp, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable .npz archive: {exc}") from None
    return out


def _templates(prefix: str, template) -> dict:
    return {prefix + jax.tree_util.keystr(p): tuple(np.shape(leaf))
            for p, leaf in jax.tree_util.tree_flatten_with_path(template)[0]}


def _fill(prefix: str, template, arrays):
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, leaf in leaves_with_path:
        value = arrays[prefix + jax.tree_util.keystr(path)]
        out.append(jax.numpy.asarray(value, dtype=np.asarray(leaf).dtype if hasattr(leaf, "dtype") else None))
    return jax.tree_util.tree_unflatten(treedef, out)


def restore(directory: str, params_template, opt_template) -> tuple:
    """(step, params, opt_state, rng, meta) from the newest checkpoint in `directory`.

    The templates give the pytree structure (a freshly built model and optimizer state).
    Every array's declared shape and dtype are checked from its header before it is read,
    and every problem is named in one CheckpointError; nothing is returned half-restored.
    """
    manifest = read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"no checkpoint in {directory} (no {MANIFEST})")
    path = os.path.join(directory, manifest["file"])
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint manifest names {manifest['file']} but {path} does not exist")
    problems: list = []
    templates = {**_templates("params", params_template), **_templates("opt", opt_template)}
    arrays = _load_arrays(path, templates, problems)
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit this model: " + "; ".join(problems[:20])
                              + (f"; and {len(problems) - 20} more" if len(problems) > 20 else ""))
    params = _fill("params", params_template, arrays)
    opt_state = _fill("opt", opt_template, arrays)
    rng = np.asarray(manifest["rng"], dtype=np.uint32)
    return int(manifest["step"]), params, opt_state, rng, manifest.get("meta", {})
