"""Device mesh and sharding rules: `--mesh data=D,fsdp=F,tensor=T` on JAX's own engine.

A run's devices form one `jax.sharding.Mesh` with three named axes:

- `data`: rollout rows and minibatch rows are split over it (each group of devices along
  it works on its own rows); parameters are replicated along it.
- `fsdp`: every parameter and optimizer-state array is split over it along its largest
  dimension that divides (ZeRO-3 style storage: XLA gathers a weight where it is used).
- `tensor`: attention heads and MLP hidden units are split over it where they divide
  (column-parallel q/k/v/gate/up, row-parallel o/down), and the KV cache's kv heads.

Arrays are placed with `NamedSharding`s and the jitted programs are left to GSPMD; a
sharding never changes what a program computes, only where each piece lives, so a
sharded run differs from a one-device run by the order of floating-point sums only.
Everything here is pure (shapes in, shardings out) except `make_mesh`, which reads the
devices, and `put`, which moves arrays.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlmrl.core.cli import MESH_AXES as AXES, mesh_axes
from vlmrl.core.tree_paths import key_parts
from vlmrl.errors import UsageError

# Dense layers split over `tensor`: column-parallel ones on their output dimension, row-
# parallel ones on their input dimension (Megatron's pairing: the pair needs one reduction).
# The vision tower's fused qkv stays whole: its output packs q|k|v, a split would cut across.
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "linear_fc1")
ROW_PARALLEL = ("o_proj", "down_proj", "linear_fc2")


# ---- the mesh ---------------------------------------------------------------------------------

def parse_mesh(spec: Optional[str], n_devices: int) -> Tuple[int, int, int]:
    """`"data=2,fsdp=2"` -> (data, fsdp, tensor) sizes for `n_devices` devices.

    None or "" puts every device on `data`. An axis left out has size 1, except `data`,
    which then takes the devices the others leave (`fsdp=2` on 4 devices is data=2, fsdp=2).
    The product must equal the device count. Raises UsageError (one line) otherwise.
    """
    if n_devices < 1:
        raise UsageError(f"--mesh: no devices ({n_devices})")
    sizes = mesh_axes(spec)
    if "data" not in sizes:
        rest = math.prod(sizes.values())
        if n_devices % rest:
            raise UsageError(f"--mesh {spec!r}: fsdp x tensor = {rest} does not divide the {n_devices} devices")
        sizes["data"] = n_devices // rest
    shape = tuple(sizes.get(a, 1) for a in AXES)
    if math.prod(shape) != n_devices:
        raise UsageError(f"--mesh {spec!r}: data x fsdp x tensor = {math.prod(shape)} but there are "
                         f"{n_devices} devices (the product must equal the device count)")
    return shape


def make_mesh(shape: Sequence[int], devices: Optional[Sequence] = None) -> Mesh:
    """A Mesh of `shape` (data, fsdp, tensor) over `devices` (default: all of jax.devices(),
    in the order JAX's own mesh helper picks for the hardware's topology)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(AXES):
        raise ValueError(f"mesh shape {shape} must have {len(AXES)} sizes ({', '.join(AXES)})")
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)  # GSPMD propagates; no sharding in types
    if devices is None:
        return jax.make_mesh(shape, AXES, axis_types=auto)
    devices = list(devices)
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices, got {len(devices)}")
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), AXES, axis_types=auto)


def mesh_shape(mesh: Mesh) -> Tuple[int, int, int]:
    """(data, fsdp, tensor) sizes of `mesh`."""
    return tuple(int(mesh.shape[a]) for a in AXES)


def describe(shape: Sequence[int]) -> str:
    """(2, 2, 1) -> "data=2,fsdp=2,tensor=1" (what --mesh takes back)."""
    return ",".join(f"{a}={int(s)}" for a, s in zip(AXES, shape))


def check_rows(rows: int, mesh_or_shape, what: str) -> None:
    """UsageError unless `rows` split evenly over the data axis."""
    data = mesh_or_shape.shape["data"] if isinstance(mesh_or_shape, Mesh) else int(mesh_or_shape[0])
    if rows % data:
        raise UsageError(f"{what} = {rows} rows do not split over the mesh's data axis of {data} devices")


# ---- parameters and optimizer state ----------------------------------------------------------

def _names(path) -> Tuple[str, ...]:
    """Key names along a pytree path (dict keys, attribute names), less nnx's trailing `value`."""
    out = key_parts(path)
    return out[:-1] if out and out[-1] == "value" else out


def param_spec(names: Sequence[str], shape: Sequence[int], fsdp: int, tensor: int) -> P:
    """The PartitionSpec of one parameter (or its Adam moment) named by its path `names`.

    `tensor` first: a column-parallel kernel [in, out] (and its bias [out]) on its output
    dimension, a row-parallel kernel on its input dimension, if that dimension divides.
    Then `fsdp` on the largest remaining dimension it divides (the first such on a tie).
    Anything else (scalars, norms too small to divide) is replicated.
    """
    spec = [None] * len(shape)
    if not shape:
        return P()
    leaf, layer = names[-1] if names else "", names[-2] if len(names) > 1 else ""
    if tensor > 1:
        dim = None
        if layer in COLUMN_PARALLEL and leaf in ("kernel", "bias"):
            dim = len(shape) - 1
        elif layer in ROW_PARALLEL and leaf == "kernel" and len(shape) == 2:
            dim = 0
        if dim is not None and shape[dim] % tensor == 0:
            spec[dim] = "tensor"
    if fsdp > 1:
        free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % fsdp == 0]
        if free:
            spec[max(free, key=lambda d: (shape[d], -d))] = "fsdp"
    return P(*spec)


def param_shardings(tree, mesh: Mesh):
    """NamedShardings for a tree of parameters, optimizer state, or both (a tuple of them):
    Adam's moments sit under paths that end like their parameter's, so they shard alike."""
    _, fsdp, tensor = mesh_shape(mesh)

    def one(path, x):
        return NamedSharding(mesh, param_spec(_names(path), np.shape(x), fsdp, tensor))

    return jax.tree_util.tree_map_with_path(one, tree)


# ---- activations: rollout rows, minibatches, the KV cache ------------------------------------

def batch_sharding(mesh: Mesh, ndim: int, axis: int = 0) -> NamedSharding:
    """Rows on `data` along dimension `axis` (the leading one by default), the rest whole."""
    spec = [None] * ndim
    spec[axis] = "data"
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def rows_sharding(mesh: Mesh, shape: Sequence[int], axis: int = 0) -> NamedSharding:
    """`batch_sharding` when the rows split over `data`, else replicated."""
    if len(shape) > axis and shape[axis] % mesh.shape["data"] == 0:
        return batch_sharding(mesh, len(shape), axis)
    return replicated(mesh)


def cache_shardings(cache, mesh: Mesh):
    """Shardings of a KVCache, like the activations that fill it: rows on `data`, and the kv
    heads on `tensor` where they divide. k, v: [L, B, kv heads, T, hd]; valid, vision: [B, T];
    rope_deltas: [B]; length: a scalar."""
    data, _, tensor = mesh_shape(mesh)
    L, B, nkv, T, hd = cache.k.shape
    rows = "data" if B % data == 0 else None
    heads = "tensor" if tensor > 1 and nkv % tensor == 0 else None
    kv = NamedSharding(mesh, P(None, rows, heads, None, None))
    bt = NamedSharding(mesh, P(rows, None))
    return cache.replace(k=kv, v=kv, valid=bt, vision=bt, length=replicated(mesh),
                         rope_deltas=NamedSharding(mesh, P(rows)))


def constrain(tree, shardings):
    """`jax.lax.with_sharding_constraint` inside a jitted program; a no-op for None."""
    return tree if shardings is None else jax.lax.with_sharding_constraint(tree, shardings)


def put(tree, shardings):
    """Move a tree of arrays to `shardings` (one transfer per leaf)."""
    return jax.device_put(tree, shardings)


ROW_AXIS = {"position_ids": 1}  # rollout arrays whose rows are not the leading dimension


def batch_tree_shardings(batch: dict, mesh: Mesh, lead: int = 0) -> dict:
    """Shardings of a rollout dict (ids, masks, position_ids [3, R, L], pixels, ...): each
    array's rows on `data`. `lead` extra leading dimensions come first (minibatch stacks)."""
    return {k: rows_sharding(mesh, np.shape(v), lead + ROW_AXIS.get(k, 0)) for k, v in batch.items()}
