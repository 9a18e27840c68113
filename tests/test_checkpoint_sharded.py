"""Orbax checkpoints under sharding: arrays saved on one mesh come back exactly on another
mesh shape, placed with the shardings of the run that restores them. Runs in a child
process with fake CPU devices (the flag must be set before JAX starts)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO

RESHARD = """
    import json, sys
    import jax, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from vlmrl.core import checkpoint

    directory, out = sys.argv[1], {}
    devices = np.array(jax.devices())
    def place(mesh, tree, spec):
        return jax.tree_util.tree_map(lambda x: jax.device_put(x, NamedSharding(mesh, spec if x.ndim == 2 else P())), tree)

    rng = np.random.default_rng(0)
    host = {"w": rng.normal(size=(8, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    saved_mesh = Mesh(devices.reshape(2, 2), ("data", "fsdp"))
    params = place(saved_mesh, host, P("fsdp", None))
    opt = optax.adam(1e-2).init(params)
    grads = jax.tree_util.tree_map(lambda x: x * 0 + 1, params)
    _, opt = optax.adam(1e-2).update(grads, opt, params)  # non-trivial moments
    checkpoint.save(directory, 5, params, opt, jax.random.PRNGKey(3), {"run": "a"})
    out["saved_shards"] = len(params["w"].addressable_shards[0].data)

    new_mesh = Mesh(devices.reshape(4, 1), ("data", "fsdp"))
    template_p = place(new_mesh, jax.tree_util.tree_map(np.zeros_like, host), P("data", None))
    template_o = optax.adam(1e-2).init(template_p)
    step, p, o, key, meta = checkpoint.restore(directory, template_p, template_o)
    out.update(step=step, meta=meta, key=key.tolist(), want_key=np.asarray(jax.random.PRNGKey(3)).tolist(),
               same_params=all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                               zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(params))),
               same_opt=all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                            zip(jax.tree_util.tree_leaves(o), jax.tree_util.tree_leaves(opt))),
               restored_spec=str(p["w"].sharding.spec), restored_mesh=dict(p["w"].sharding.mesh.shape),
               restored_shard_rows=p["w"].addressable_shards[0].data.shape[0],
               mu_spec=str(o[0].mu["w"].sharding.spec))
    print(json.dumps(out))
"""


def test_a_checkpoint_saved_on_a_2x2_mesh_restores_exactly_on_4x1(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(RESHARD), str(tmp_path / "ckpt")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["saved_shards"] == 4  # 8 rows over fsdp=2
    assert out["step"] == 5 and out["meta"] == {"run": "a"} and out["key"] == out["want_key"]
    assert out["same_params"] and out["same_opt"]
    # placed as the restoring run holds its arrays: rows over data=4
    assert out["restored_mesh"] == {"data": 4, "fsdp": 1} and out["restored_spec"] == "P('data', None)"
    assert out["restored_shard_rows"] == 2 and out["mu_spec"] == "P('data', None)"
