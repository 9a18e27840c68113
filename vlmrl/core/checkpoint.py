"""Training checkpoints with orbax-checkpoint: sharded, multi-process safe, restorable onto
another mesh shape.

Layout of a checkpoint directory (`--ckpt DIR`):
  vlmrl-checkpoints.json   marks the directory as ours (nothing else is ever written or
                           deleted in a directory without it)
  <step>/state/            params and optimizer state: orbax's OCDBT/zarr store, each
                           process writing the shards it holds
  <step>/meta/metadata     {"step": N, "rng": [...], "meta": {...}} (JSON)
Orbax writes a step into a temporary directory and renames it into place when every
process has finished, so a run killed mid-save leaves the previous step intact; it keeps
the newest `keep` steps.

Every byte of a checkpoint is untrusted: the directory must carry our marker, a step may
hold no symbolic link, the JSON is bounded and checked, and every array's shape and dtype
are read from its metadata and compared with the model's before anything is read; any
failure is one CheckpointError naming every problem. Restore places each array with the
sharding of its template, so a checkpoint saved on one mesh resumes on another.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vlmrl.core import distributed
from vlmrl.core.checkpoint_dir import (META_MAX, METADATA_MAX, WALK_MAX, CheckpointError, check_orbax_metadata, claim,
                                       steps)
from vlmrl.core.tree_paths import key_parts

def _manager(directory: str, keep: Optional[int]):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


# ---- finite values -------------------------------------------------------------------------

def first_non_finite(tree) -> Optional[str]:
    """The name (as in fit_problems) of the first floating array of `tree` holding a NaN or
    an infinity, or None when all are finite. Every process must call it for the same tree
    (the check is one jitted reduction over the global arrays)."""
    named = [(_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
             if jnp.issubdtype(np.dtype(x.dtype), jnp.inexact)]
    if not named:
        return None
    finite = jax.jit(lambda xs: jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))([x for _, x in named])
    bad = np.flatnonzero(~distributed.to_host(finite).astype(bool))
    return named[int(bad[0])][0] if bad.size else None


# ---- save -----------------------------------------------------------------------------------

def save(directory: str, step: int, params, opt_state, rng, meta: Optional[dict] = None, keep: int = 2) -> str:
    """Write the checkpoint of `step` (every process calls this with its shards); keeps the
    newest `keep` steps. Returns the step's directory."""
    import orbax.checkpoint as ocp

    bad = first_non_finite({"params": params, "opt": opt_state})
    if bad is not None:  # a checkpoint is only ever of finite values: it may prune the last good one
        raise CheckpointError(f"not saving step {int(step)} in {directory}: array {bad} holds NaN or infinite values")
    claim(directory)
    check_orbax_metadata(directory)  # (orbax reads every step's when it opens the directory)
    info = {"step": int(step), "rng": np.asarray(jax.device_get(rng)).astype(np.int64).tolist(), "meta": meta or {}}
    manager = _manager(directory, keep)
    try:
        manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params,
                                                                                     "opt": opt_state}),
                                                        meta=ocp.args.JsonSave(info)), force=True)
        manager.wait_until_finished()
    except OSError as exc:
        raise CheckpointError(f"cannot save a checkpoint in {directory}: {exc.strerror or exc}") from None
    except Exception as exc:  # orbax's own errors (e.g. arrays it cannot write from this process)
        raise CheckpointError(f"cannot save a checkpoint in {directory} ({_one_line(exc)})") from None
    finally:
        manager.close()
    return os.path.join(directory, str(int(step)))


# ---- checks before a restore ----------------------------------------------------------------

def _check_tree(path: str) -> None:
    """No symbolic link anywhere in a step (a store must not read outside its directory),
    a bounded number of entries, and orbax's own JSON metadata files of bounded size."""
    seen = 0
    for root, dirs, files in os.walk(path):  # (os.walk does not descend into linked directories)
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                raise CheckpointError(f"checkpoint {path} holds a symbolic link: "
                                      f"{os.path.relpath(os.path.join(root, name), path)}")
        for name in files:
            full = os.path.join(root, name)
            if (name.startswith("_") or os.path.basename(root) == "array_metadatas") \
                    and os.path.getsize(full) > METADATA_MAX:
                raise CheckpointError(f"checkpoint file {full} is larger than {METADATA_MAX} bytes")
        seen += len(dirs) + len(files)
        if seen > WALK_MAX:
            raise CheckpointError(f"checkpoint {path} holds more than {WALK_MAX} files")


def _read_meta(path: str, step: int) -> dict:
    """The step's checked JSON: step number, rng words, the run's meta."""
    file = os.path.join(path, "meta", "metadata")
    try:
        with open(file, "rb") as fh:
            raw = fh.read(META_MAX + 1)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read its metadata: {exc.strerror or exc}") from None
    if len(raw) > META_MAX:
        raise CheckpointError(f"checkpoint metadata {file} is larger than {META_MAX} bytes")
    try:
        info = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint metadata {file} is not valid JSON: {exc}") from None
    problem = _meta_problem(info, step)
    if problem:
        raise CheckpointError(f"checkpoint metadata {file}: {problem}")
    return info


def step_meta(directory: str, step: int) -> dict:
    """The run meta saved with `step` (checked as a restore checks it), without reading any
    array: what a resume compares with its own before it writes anything."""
    path = os.path.join(directory, str(step))
    _check_tree(path)
    return _read_meta(path, step).get("meta", {})


def _meta_problem(m, step: int) -> str:
    if not isinstance(m, dict):
        return "not a JSON object"
    got, rng, meta = m.get("step"), m.get("rng"), m.get("meta", {})
    if not isinstance(got, int) or isinstance(got, bool) or got != step:
        return f"step {str(got)[:40]!r} is not the step of its directory ({step})"
    if not (isinstance(rng, list) and 0 < len(rng) <= 64
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 32 for x in rng)):
        return "rng is not a list of uint32 words"
    if not isinstance(meta, dict):
        return "meta is not a JSON object"
    return ""


def _name(path) -> str:
    """orbax's name of a leaf: its keys joined with dots."""
    return ".".join(key_parts(path))


def _wanted(template) -> dict:
    return {_name(p): (tuple(np.shape(x)), np.dtype(x.dtype)) for p, x in jax.tree_util.tree_flatten_with_path(template)[0]}


def _stored(metadata_tree) -> dict:
    out = {}
    for leaf in jax.tree_util.tree_leaves(metadata_tree):
        name, shape, dtype = getattr(leaf, "name", None), getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
        if isinstance(name, str) and shape is not None:
            out[name] = (tuple(int(d) for d in shape), dtype)
    return out


def _some(names: list, what: str) -> list:
    if not names:
        return []
    if len(names) == 1:
        return [f"{what} {names[0]}"]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return [f"{what} {len(names)} arrays ({', '.join(names[:3])}{more})"]


def fit_problems(stored: dict, wanted: dict) -> list:
    """Every way the stored arrays ({name: (shape, dtype)}) fail to be the model's: arrays
    of another shape or dtype each by name, missing and unexpected ones counted."""
    problems = []
    for name, (shape, dtype) in wanted.items():
        if name not in stored:
            continue
        got_shape, got_dtype = stored[name]
        if got_shape != shape:
            problems.append(f"{name} has shape {list(got_shape)}, the model expects {list(shape)}")
        elif got_dtype is None or np.dtype(got_dtype) != dtype:
            problems.append(f"{name} has dtype {got_dtype}, the model expects {dtype}")
    problems += _some([n for n in wanted if n not in stored], "missing")
    problems += _some([n for n in stored if n not in wanted], "unexpected")
    return problems


def _abstract(x):
    """What orbax restores a leaf as: its template's shape, dtype and sharding (the mesh of
    this run, whatever the mesh of the run that saved it)."""
    sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def _quiet_closed_loop_reports() -> None:
    """When orbax gives up on a damaged store, tensorstore may still finish other reads and
    post them to the asyncio loop orbax has closed; Python reports that as an unraisable
    RuntimeError with a traceback on stderr, after our one-line error. Drop exactly that
    report (every other one goes to the hook that was there)."""
    previous = sys.unraisablehook
    if getattr(previous, "_vlmrl_quiet", False):
        return

    def hook(report):
        if isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed":
            return
        previous(report)

    hook._vlmrl_quiet = True
    sys.unraisablehook = hook


def _unreadable(path: str, exc: BaseException, wanted: dict) -> str:
    """One line for an array orbax could not read: the step directory and the array's name.
    Tensorstore's text (a dump of its spec) is not for the user; only the array's name is
    taken from it, where the store is quoted as "<name>/<chunk>" or '<name>/'."""
    texts, seen = [], exc
    while seen is not None and len(texts) < 8:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    for text in reversed(texts):  # the innermost error names the chunk it was reading
        for name in wanted:
            if f'"{name}/' in text or f"'{name}/" in text:
                return f"checkpoint {path}: array {name} cannot be read (its data is missing, truncated or damaged)"
    return f"checkpoint {path}: its array data cannot be read (a data file is missing, truncated or damaged)"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


# ---- restore --------------------------------------------------------------------------------

def restore(directory: str, params_template, opt_template, step: Optional[int] = None,
            check_meta: Optional[Callable[[dict], None]] = None) -> tuple:
    """(step, params, opt_state, rng, meta) from the newest (or the given) checkpoint step.

    The templates (the run's freshly built params and optimizer state, or ShapeDtypeStructs
    with shardings) give the tree, every array's shape and dtype, and where it goes.
    `check_meta(meta)` runs on the saved run's meta before any array is looked at, so a
    checkpoint of another run is named as such rather than as a list of shape mismatches.
    Nothing is returned half-restored: any problem is one CheckpointError.
    """
    import orbax.checkpoint as ocp

    found = steps(directory)
    if step is None:
        if not found:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        step = found[-1]
    elif step not in found:
        raise FileNotFoundError(f"no checkpoint of step {step} in {directory}")
    path = os.path.join(directory, str(step))
    _check_tree(path)
    info = _read_meta(path, step)
    check_orbax_metadata(directory)
    if check_meta is not None:
        check_meta(info.get("meta", {}))
    template = {"params": params_template, "opt": opt_template}
    _quiet_closed_loop_reports()
    manager = _manager(directory, None)
    try:
        try:
            metadata = manager.item_metadata(step)["state"]
        except Exception as exc:  # orbax and tensorstore raise many types on a damaged store
            raise CheckpointError(f"checkpoint {path} has unreadable metadata ({_one_line(exc)})") from None
        wanted = _wanted(template)
        problems = fit_problems(_stored(getattr(metadata, "tree", metadata)), wanted)
        if problems:
            raise CheckpointError(f"checkpoint {path} does not fit this model: " + "; ".join(problems[:20])
                                  + (f"; and {len(problems) - 20} more" if len(problems) > 20 else ""))
        target = jax.tree_util.tree_map(_abstract, template)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        except Exception as exc:
            raise CheckpointError(_unreadable(path, exc, wanted)) from None
    finally:
        manager.close()
    state = restored["state"]
    bad = first_non_finite(state)
    if bad is not None:  # damaged data that still decodes: resuming would train on NaN
        raise CheckpointError(f"checkpoint {path}: array {bad} holds NaN or infinite values (damaged?)")
    # orbax hands back the template's tree types where it can; keep the template's exactly
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params_template),
                                          jax.tree_util.tree_leaves(state["params"]))
    opt_state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(opt_template),
                                             jax.tree_util.tree_leaves(state["opt"]))
    return int(step), params, opt_state, np.asarray(info["rng"], np.uint32), info.get("meta", {})
