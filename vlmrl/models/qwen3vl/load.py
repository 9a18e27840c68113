"""Read (and write) Hugging Face Qwen3-VL checkpoint directories as they are.

The mapping between HF tensor names and NNX parameter paths is derived from the model itself
(`mapping_table`): the modules carry HF names, so `model.language_model.layers.3.mlp.up_proj.kernel`
is `model.language_model.layers.3.mlp.up_proj.weight` transposed. All problems are collected and
raised together in one CheckpointError, and the model is assembled only after every tensor
checked out: a failed load never returns (or leaves behind) a half-loaded model.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlmrl.models.qwen3vl.config import CheckpointError, Qwen3VLConfig  # noqa: F401  (re-exported)

INDEX_FILE = "model.safetensors.index.json"
# NNX leaf name -> HF leaf name (Linear kernel, LayerNorm scale, Embed table, RMSNorm weight, biases).
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "weight": "weight", "bias": "bias"}


class UnusedWeightsWarning(UserWarning):
    """Checkpoint tensors that no model parameter took."""


# ---- mapping --------------------------------------------------------------------------------
def mapping_table(model) -> Dict[str, Tuple[tuple, tuple, str]]:
    """HF tensor name -> (NNX path, NNX shape, transform) for every parameter of `model`
    (a real or `nnx.eval_shape` model). transform is "T" (Linear [out,in] -> [in,out]),
    "flatten_T" (Conv3d patch embed [D,C,T,P,P] -> Linear kernel [C*T*P*P, D]) or "none"."""
    table = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        leaf = path[-1]
        if leaf not in _LEAF:
            raise TypeError(f"parameter {'.'.join(map(str, path))} has no Hugging Face name rule")
        name = ".".join(str(p) for p in path[:-1]) + "." + _LEAF[leaf]
        shape = tuple(var.get_value().shape)
        if leaf == "kernel" and len(shape) == 2:
            transform = "flatten_T" if name.endswith("patch_embed.proj.weight") else "T"
        else:
            transform = "none"
        table[name] = (path, shape, transform)
    return table


def _hf_shape(name: str, nnx_shape: tuple, transform: str, config: Qwen3VLConfig) -> tuple:
    """The shape the checkpoint should hold for a parameter (HF / PyTorch layout)."""
    if transform == "T":
        return nnx_shape[::-1]
    if transform == "flatten_T":
        v = config.vision
        return (nnx_shape[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return nnx_shape


def to_nnx(arr: np.ndarray, transform: str) -> np.ndarray:
    """A checkpoint tensor in the layout of its NNX parameter (`transform` from mapping_table)."""
    if transform == "T":
        return arr.T
    if transform == "flatten_T":
        return arr.reshape(arr.shape[0], -1).T
    return arr


def _from_nnx(arr: np.ndarray, transform: str, hf_shape: tuple) -> np.ndarray:
    if transform == "T":
        return arr.T
    if transform == "flatten_T":
        return arr.T.reshape(hf_shape)
    return arr


# ---- reading --------------------------------------------------------------------------------
class _FixedKeyRngs:
    """Stands in for nnx.Rngs when only shapes are needed. A real Rngs bumps a traced counter on
    every draw, and under eval_shape each bump costs time growing with the trace (jax builds an
    error message for a tracer's missing .sharding): 44 s instead of 3 s for the 2B model."""

    def __init__(self):
        self._key = jax.random.key(0)

    def __call__(self):
        return self._key

    def __getattr__(self, stream):  # rngs.params(), rngs.default(), ...
        if stream.startswith("__"):
            raise AttributeError(stream)
        return lambda: self._key


def abstract_model(config: Qwen3VLConfig, dtype=jnp.float32):
    """A Qwen3VL whose parameters are ShapeDtypeStructs (no memory, no random init)."""
    from vlmrl.models.qwen3vl.model import Qwen3VL

    return nnx.eval_shape(lambda: Qwen3VL(config, dtype=dtype, rngs=_FixedKeyRngs()))


def _tensor_files(path: str, problems: List[str]) -> Dict[str, str]:
    """Tensor name -> safetensors file, from the index json when present, else every *.safetensors."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as fh:
                weight_map = json.load(fh)["weight_map"]
        except (ValueError, KeyError, TypeError, RecursionError, OSError) as exc:
            problems.append(f"{index} is not a valid safetensors index ({exc!r})")
            return {}
        if not isinstance(weight_map, dict):
            problems.append(f"{index}: weight_map is not a JSON object")
            return {}
        out = {}
        root = os.path.realpath(path)
        for name, fname in weight_map.items():
            fpath = os.path.join(path, str(fname))
            if not isinstance(fname, str) or os.path.commonpath([root, os.path.realpath(fpath)]) != root:
                problems.append(f"{index} maps {str(name)[:80]} to {str(fname)[:80]!r}, outside the checkpoint "
                                "directory (refused)")
                continue
            if not os.path.isfile(fpath):
                problems.append(f"{index} maps {name} to {fname}, which does not exist")
                continue
            out[str(name)] = fpath
        return out
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        problems.append(f"no *.safetensors files in {path}")
    from safetensors import safe_open

    out = {}
    for fname in files:
        fpath = os.path.join(path, fname)
        try:
            with safe_open(fpath, framework="np") as fh:
                for name in fh.keys():
                    out[name] = fpath
        except Exception as exc:  # a corrupt or truncated file: report it, keep collecting
            problems.append(f"cannot read {fpath}: {exc}")
    return out


def read_config(path: str) -> Qwen3VLConfig:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"checkpoint directory {path} has no config.json ({cfg_path})")
    return Qwen3VLConfig.from_json_file(cfg_path)


def load_hf_checkpoint(path: str, dtype=jnp.float32, *, strict: bool = False):
    """Load a HF Qwen3-VL checkpoint directory -> (Qwen3VL, Qwen3VLConfig).

    Reads config.json (either rope encoding) and one or many *.safetensors (with
    model.safetensors.index.json when sharded); params are cast to `dtype`.
    Missing tensors and shape mismatches raise CheckpointError naming every culprit. Checkpoint
    tensors the model does not use are reported with an UnusedWeightsWarning listing them (HF
    behaves the same way), or raise with strict=True. When tied, lm_head.weight is ignored.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    config = read_config(path)
    problems: List[str] = []
    files = _tensor_files(path, problems)
    abstract = abstract_model(config, dtype)
    table = mapping_table(abstract)

    by_file: Dict[str, List[str]] = {}
    for name in table:
        if name not in files:
            problems.append(f"missing tensor {name} (expected shape "
                            f"{list(_hf_shape(name, table[name][1], table[name][2], config))})")
        else:
            by_file.setdefault(files[name], []).append(name)
    ignored = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unused = sorted(n for n in files if n not in table and n not in ignored)

    values = {}
    for fpath, names in by_file.items():
        with safe_open(fpath, framework="np") as fh:
            for name in names:
                nnx_path, nnx_shape, transform = table[name]
                want = _hf_shape(name, nnx_shape, transform, config)
                got = tuple(fh.get_slice(name).get_shape())
                if got != want:
                    problems.append(f"tensor {name} has shape {list(got)} in the checkpoint but the model "
                                    f"expects {list(want)}")
                    continue
                values[nnx_path] = to_nnx(fh.get_tensor(name), transform)
    if unused and strict:
        problems.append(f"{len(unused)} checkpoint tensor(s) not used by the model: {', '.join(unused)}")
    if problems:
        raise CheckpointError(path, problems)
    if unused:
        warnings.warn(f"{path}: {len(unused)} checkpoint tensor(s) not used by the model: {', '.join(unused)}",
                      UnusedWeightsWarning, stacklevel=2)

    graphdef, state = nnx.split(abstract)
    flat = []
    for p, var in nnx.to_flat_state(state):
        if p not in values:  # only Params are in the table; anything else would be left abstract
            raise CheckpointError(path, [f"model state {'.'.join(map(str, p))} has no checkpoint source"])
        flat.append((p, var.replace(jnp.asarray(values[p], dtype=var.get_value().dtype))))
    model = nnx.merge(graphdef, nnx.from_flat_state(flat))
    return model, config


# ---- writing --------------------------------------------------------------------------------
def save_hf_checkpoint(model, path: str) -> None:
    """Write config.json (official encoding) + model.safetensors that HF and `load_hf_checkpoint`
    read back. Tied models store no lm_head.weight (as save_pretrained does)."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    config = model.config
    tensors = {}
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for name, (nnx_path, nnx_shape, transform) in mapping_table(model).items():
        arr = np.asarray(jax.device_get(params[nnx_path].get_value()))
        tensors[name] = np.ascontiguousarray(_from_nnx(arr, transform, _hf_shape(name, nnx_shape, transform, config)))
    cfg = config.to_hf_dict()
    cfg["dtype"] = cfg["text_config"]["dtype"] = str(jnp.dtype(model.dtype))
    tmp_w, tmp_c = os.path.join(path, ".model.safetensors.tmp"), os.path.join(path, ".config.json.tmp")
    save_file(tensors, tmp_w, metadata={"format": "pt"})
    with open(tmp_c, "w", encoding="utf-8") as fh:
        json.dump(cfg, fh, indent=2)
    os.replace(tmp_w, os.path.join(path, "model.safetensors"))
    os.replace(tmp_c, os.path.join(path, "config.json"))
