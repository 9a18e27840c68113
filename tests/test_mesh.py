"""--mesh: the flag's parsing, the sharding rules, and runs on 4 fake CPU devices.

The suite's own process has one device (conftest), so the multi-device checks run
tests/mesh_checks.py in a child with XLA_FLAGS=--xla_force_host_platform_device_count=4.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import one_line_exit_2
from vlmrl.core import mesh as meshlib
from vlmrl.core.cli import parse_args
from vlmrl.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--batch", "2", "--group", "4", "--minibatches", "2", "--seed", "3"]


def run_devices(n: int, *argv: str, timeout: float = 900) -> dict:
    """Run tests/mesh_checks.py with `n` fake CPU devices; its last stdout line, parsed."""
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "mesh_checks.py"), *argv], env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("spec, n, shape", [
    (None, 4, (4, 1, 1)), ("", 1, (1, 1, 1)), ("data=2,fsdp=2", 4, (2, 2, 1)), ("fsdp=2", 4, (2, 2, 1)),
    ("tensor=4", 4, (1, 1, 4)), (" data = 1 , fsdp=2, tensor=2 ", 4, (1, 2, 2)), ("data=8", 8, (8, 1, 1)),
])
def test_parse_mesh_sizes(spec, n, shape):
    assert meshlib.parse_mesh(spec, n) == shape


@pytest.mark.parametrize("spec, n, needle", [
    ("data=2,fsdp=2", 8, "= 4 but there are 8 devices"),
    ("data=3", 4, "= 3 but there are 4 devices"),
    ("fsdp=3", 4, "fsdp x tensor = 3 does not divide the 4 devices"),
    ("data=2,data=2", 4, "axis data given twice"),
    ("pipeline=2", 2, "expected axis=size pairs over data, fsdp, tensor"),
    ("data", 2, "expected axis=size pairs"),
    ("data=two", 2, "size of data must be an integer"),
    ("data=0", 2, "size of data must be in 1..1048576"),
])
def test_parse_mesh_refuses_bad_specs_in_one_line(spec, n, needle):
    with pytest.raises(UsageError) as err:
        meshlib.parse_mesh(spec, n)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_train_flag_checks_rows_against_data():
    assert parse_args([*SMALL, "--mesh", "data=2,fsdp=2"]).mesh == "data=2,fsdp=2"
    with pytest.raises(UsageError, match="must both divide by data"):
        parse_args(["--batch", "3", "--group", "3", "--minibatches", "1", "--mesh", "data=2"])
    with pytest.raises(UsageError, match="expected axis=size"):
        parse_args([*SMALL, "--mesh", "rows=2"])


def test_train_cli_bad_mesh_is_one_line_exit_2():
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "vlmrl.core.train", *SMALL, "--mesh", "data=2"], env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    one_line_exit_2(proc, "--mesh 'data=2'", "but there are 1 devices")


@pytest.mark.parametrize("names, shape, fsdp, tensor, spec", [
    (("q_proj", "kernel"), (64, 128), 2, 2, ("fsdp", "tensor")),  # column parallel, fsdp on the input dim
    (("q_proj", "kernel"), (64, 128), 4, 1, (None, "fsdp")),  # the largest dim that divides
    (("o_proj", "kernel"), (128, 64), 2, 2, ("tensor", "fsdp")),  # row parallel
    (("down_proj", "kernel"), (96, 64), 1, 4, ("tensor", None)),
    (("up_proj", "bias"), (128,), 2, 2, ("tensor",)),
    (("k_proj", "kernel"), (64, 6), 1, 4, (None, None)),  # 6 outputs do not split 4 ways
    (("embed_tokens", "embedding"), (30, 64), 4, 2, (None, "fsdp")),  # 30 rows: not 4 ways
    (("input_layernorm", "weight"), (64,), 2, 1, ("fsdp",)),
    (("input_layernorm", "weight"), (6,), 4, 1, (None,)),
    (("qkv", "kernel"), (32, 96), 1, 2, (None, None)),  # fused q|k|v stays whole on tensor
    (("mu", "count"), (), 2, 2, ()),
    (("proj", "kernel"), (1536, 32), 4, 1, ("fsdp", None)),  # the largest dim that divides
    (("x", "kernel"), (64, 64), 2, 1, ("fsdp", None)),  # equal dims: the first
])
def test_param_spec_rules(names, shape, fsdp, tensor, spec):
    assert tuple(meshlib.param_spec(names, shape, fsdp, tensor)) == spec


def test_param_shardings_on_one_device_mesh_replicate_everything():
    import jax

    mesh = meshlib.make_mesh((1, 1, 1))
    tree = {"layer": {"q_proj": {"kernel": np.zeros((4, 8), np.float32)}}, "count": np.zeros((), np.int32)}
    sh = meshlib.param_shardings(tree, mesh)
    assert all(s.is_fully_replicated for s in jax.tree_util.tree_leaves(sh))
    assert meshlib.describe(meshlib.mesh_shape(mesh)) == "data=1,fsdp=1,tensor=1"


@pytest.mark.slow
def test_tiny_trainer_on_4_devices_shards_params_and_optimizer_state():
    out = run_devices(4, "placement", "step")
    assert out["devices"] == 4 and out["mesh"] == [2, 2, 1]
    params = out["params"]
    q = next(v for k, v in params.items() if "['layers'][0]['self_attn']['q_proj']['kernel']" in k)
    assert q == ["('fsdp',)", [64, 64], [32, 64]]
    sharded = [v for v in params.values() if "fsdp" in v[0]]
    # every array with a dimension that splits in two is split, and its local shard is half
    for spec, shape, local in params.values():
        if any(d % 2 == 0 for d in shape):
            assert "fsdp" in spec, (spec, shape)
            assert np.prod(local) * 2 == np.prod(shape), (spec, shape, local)
    assert len(sharded) > 40
    assert sum("fsdp" in s for s in out["opt"]) == 2 * len(sharded)  # Adam's mu and nu alike
    assert out["after_step"] == [params, out["opt"]]  # an update leaves every array where it was


# Same seed, same flags: a data=2,fsdp=2 run on 4 devices against the one-device run.
# Sampling must agree exactly (partitionable threefry draws per row, whatever the mesh);
# the update's scalars agree up to the order of float32 sums across shards.
PARITY_RTOL, PARITY_ATOL = 1e-5, 1e-5
PARITY_FLAGS = ["--batch", "4", "--group", "4", "--minibatches", "2", "--seed", "1", "--steps", "3"]


@pytest.fixture(scope="module")
def one_device_run():
    return run_devices(1, "train", *PARITY_FLAGS)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["data=2,fsdp=2", "fsdp=2,tensor=2"])
def test_mesh_run_matches_one_device_run(one_device_run, spec):
    one = one_device_run
    four = run_devices(4, "train", *PARITY_FLAGS, "--mesh", spec)
    assert (one["devices"], four["devices"]) == (1, 4)
    assert len(one["history"]) == len(four["history"]) == 3
    for a, b in zip(one["rollouts"], four["rollouts"]):
        assert a["ids"] == b["ids"]  # the same sampled tokens
        assert a["rewards"] == b["rewards"]
    assert any(r > 0 for ro in one["rollouts"] for r in ro["rewards"])  # rewards that carry signal
    for a, b in zip(one["history"], four["history"]):
        for key in ("loss/total", "loss/pg", "policy/kl_ref", "policy/entropy", "policy/clip_frac",
                    "optim/grad_norm", "reward/mean", "reward/std"):
            np.testing.assert_allclose(b[key], a[key], rtol=PARITY_RTOL, atol=PARITY_ATOL, err_msg=key)


def test_readme_lists_every_train_flag():
    import dataclasses

    from vlmrl.core.cli import Args

    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    section = readme[readme.index("### Train flags"):readme.index("### Several devices")]
    missing = [f.name for f in dataclasses.fields(Args) if f"`--{f.name}" not in section]
    assert missing == []


@pytest.mark.slow
def test_taps_on_a_mesh_send_one_event_stream_and_off_is_off():
    out = run_devices(4, "taps")
    one, mesh = out["one"], out["mesh"]
    # prefill + 7 decode steps at stride 1: one callback per emitted step for the whole mesh
    assert mesh["callbacks"] == one["callbacks"] == 8 and mesh["decode_callbacks"] == 7
    # the same events (step, row, token, prob) as on one device: 4 published rows per emit
    assert len(mesh["events"]) == 8 * 4 and mesh["events"] == one["events"]
    assert mesh["tokens"] == one["tokens"]
    # the payload is reduced before the gather: what reaches the host does not grow with devices
    assert 0 < mesh["bytes"] == one["bytes"] < 4096
    # off is off on the sharded program: no callback in its jaxpr or HLO, identical to no taps
    assert out["jaxpr_off_equals_plain"] and out["jaxpr_off_sharded"] > 0
    assert out["jaxpr_callbacks"]["off"] == out["jaxpr_callbacks"]["plain"] == 0 < out["jaxpr_callbacks"]["on"]
    assert out["hlo_callbacks"]["off"] == 0 < out["hlo_callbacks"]["on"]
    assert out["update"]["callbacks"] == 0 < out["update"]["constraints"]


@pytest.mark.slow
def test_image_taps_on_a_data_4_mesh_keep_one_callback_per_emit_and_off_is_off():
    """The image view's part rides in the same one callback per emitted step on a data=4 mesh
    (its watched row replicated before its gather) and carries what one device carries."""
    out = run_devices(4, "image_taps")
    one, mesh = out["one"], out["mesh"]
    assert mesh["callbacks"] == one["callbacks"] == 6 and mesh["decode_callbacks"] == one["decode_callbacks"] == 5
    assert mesh["tokens"] == one["tokens"] and sorted(mesh["steps"]) == sorted(one["steps"]) == list(range(6))
    np.testing.assert_allclose(np.array(mesh["attention"]), np.array(one["attention"]), atol=1e-3)  # float16 cells
    np.testing.assert_allclose(np.array(mesh["share"]), np.array(one["share"]), atol=1e-5)
    assert out["jaxpr_off_equals_plain"] and out["jaxpr_callbacks"]["off"] == out["jaxpr_callbacks"]["plain"] == 0
    assert out["jaxpr_callbacks"]["on"] > 0


@pytest.mark.slow
def test_bench_taps_mesh_splits_the_cpu_itself_and_reports_the_gather():
    env = dict(os.environ, PYTHONPATH=REPO)  # conftest's XLA_FLAGS asks for 1 device: the script replaces it
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_taps.py"), "--mesh", "data=2,fsdp=2",
                           "--new-tokens", "8", "--reps", "1", "--prompt-len", "8", "--contexts", "128"], env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["devices"], result["mesh"], result["batch"]) == (4, "data=2,fsdp=2,tensor=1", 2)
    assert result["callback_errors"] == 0 and result["emit_callbacks"] > 0
    assert 0 < result["bytes_per_emit"]["128"] < 65536
    assert "rematerialization" not in proc.stderr  # the payload is replicated before its one callback


REMAT = "Involuntary full rematerialization"
# A host callback on a data-sharded slice: XLA must move it to device 0 and warns (the control
# that shows this child's stderr carries XLA's partitioner warnings at all)
CONTROL = """
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from vlmrl.core import mesh as meshlib
from vlmrl.instrument import tap_callback
x = jax.device_put(jnp.arange(64.0).reshape(16, 4), NamedSharding(meshlib.make_mesh((4, 1, 1)), P("data")))
def f(x):
    tap_callback.emit(lambda a: None, jnp.concatenate([x[1:7].reshape(-1), jnp.ones(3)]))
    return x.sum()
jax.jit(f).lower(x).compile()
"""


def _four_devices(argv, **kw):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # XLA's default level prints its warnings
    return subprocess.run([sys.executable, *argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL, **kw)


def test_a_childs_stderr_carries_xlas_rematerialization_warning():
    """The control for the test below: its check would pass vacuously if the warning never
    reached the child's stderr (a log level, a changed message)."""
    control = _four_devices(["-c", CONTROL])
    assert control.returncode == 0 and REMAT in control.stderr, control.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["data=4", "data=2,fsdp=2", "fsdp=4", "fsdp=2,tensor=2"])
def test_a_tapped_run_on_a_mesh_compiles_without_full_rematerialization(spec, tmp_path):
    """The user's command (colors, so an image in every prompt, taps on through --record): XLA
    compiles the sampler, scorer and update without resharding anything by replicating it."""
    log = tmp_path / "run.jsonl"
    proc = _four_devices(["-m", "vlmrl.core.train", "--env", "colors", "--steps", "1", "--mesh", spec,
                          "--record", str(log), "--no_compile_cache", "--quiet"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert REMAT not in proc.stderr, [line[:400] for line in proc.stderr.splitlines() if REMAT in line]
    kinds = [json.loads(line).get("kind") for line in log.read_text().splitlines()]
    assert kinds.count("image_attention") >= 1 and kinds.count("decode") >= 1  # the image taps were compiled in
