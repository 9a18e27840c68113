"""Scale-out beyond one process: a sharded checkpoint resumes on another mesh shape and
continues the curve; two processes of two fake CPU devices each, joined over loopback,
train like one process, and only process 0 prints and records."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

SMALL = ["--batch", "4", "--group", "4", "--minibatches", "2", "--seed", "1", "--no_compile_cache"]
# fp32 on CPU: a sharded program sums in another order than the one-device program; the
# figures agree to about 1e-6 relative, the tolerance leaves room for the logits' last bits
RTOL, ATOL = 1e-4, 1e-6


def _env(devices: int) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


@pytest.mark.parametrize("environ,why", [
    ({}, ""), ({"SLURM_STEP_NUM_TASKS": "1"}, ""), ({"OMPI_COMM_WORLD_SIZE": "x"}, ""),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "JAX_COORDINATOR_ADDRESS"),
    ({"SLURM_STEP_NUM_TASKS": "4"}, "SLURM_STEP_NUM_TASKS"), ({"OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_COMM_WORLD_SIZE"),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, "TPU_WORKER_HOSTNAMES"), ({"TPU_WORKER_HOSTNAMES": "a"}, ""),
])
def test_without_flags_a_run_joins_others_only_when_the_environment_says_so(environ, why):
    from vlmrl.core.distributed import cluster_environment

    assert cluster_environment(environ) == why


def _close(a: dict, b: dict) -> bool:
    return all(np.isclose(a[k], b[k], rtol=RTOL, atol=ATOL) for k in a)


@pytest.mark.slow
def test_a_checkpoint_saved_on_data2_fsdp2_resumes_on_data4_and_continues_the_curve(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "dist_checks.py"), "resume_on_other_mesh",
                           str(tmp_path / "ckpt"), "data=2,fsdp=2", "data=4,fsdp=1"], env=_env(4), cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["resumed_at"] == 2
    assert out["placed"]["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    # the resumed run's updates 2 and 3 are the uninterrupted run's, within fp32 tolerance
    for straight, again in zip(out["straight"], out["again"]):
        assert _close(straight, again), (straight, again)
    assert out["straight"] != out["head"][:2]  # the curve moved: the comparison can fail
    assert any(m["reward/mean"] > 0 for m in out["straight"])  # rewards in the compared updates


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _steps(stdout: str) -> list:
    return [ln for ln in stdout.splitlines() if ln.startswith("step ")]


def _events(path, kind: str) -> list:
    return [json.loads(ln) for ln in open(path) if f'"kind":"{kind}"' in ln]


@pytest.mark.slow
def test_two_processes_of_two_devices_train_like_one_process_and_only_process_0_records(tmp_path):
    port = _free_port()
    runs = tmp_path / "runs"
    runs.mkdir()
    flags = [*SMALL, "--steps", "3", "--record", str(runs / "run.jsonl"), "--ckpt", str(tmp_path / "ckpt"),
             "--ckpt_every", "2", "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2", "--resume"]
    procs = []
    try:
        for i in (0, 1):
            procs.append(subprocess.Popen([sys.executable, "-m", "vlmrl.core.train", *flags, "--process_id", str(i)],
                                          cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        outs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:  # a process left waiting for its peer must not outlive the test
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    single = subprocess.run([sys.executable, "-m", "vlmrl.core.train", *SMALL, "--steps", "3",
                             "--record", str(tmp_path / "single.jsonl")], cwd=REPO, env=_env(1),
                            capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]

    # process 0 prints the progress, process 1 no line of ours (gloo prints its own); one log, one header
    assert len(_steps(outs[0][0])) == 3 and _steps(outs[1][0]) == []
    assert not [ln for ln in outs[1][0].splitlines() if ln.startswith(("devices", "--resume", "checkpoint of", "comp"))]
    # process 0 alone says where it runs and that --resume found nothing (resume-or-start)
    ours = [ln for ln in outs[0][0].splitlines() if not ln.startswith("[Gloo]") and "[Gloo]" not in ln]
    assert ours[0].startswith("devices 4 · data 4 · 2 procs · cpu · "), ours[:3]
    assert outs[0][0].count("--resume: no checkpoint found in") == 1
    assert sorted(os.listdir(runs)) == ["run.jsonl"]
    headers = _events(runs / "run.jsonl", "header")
    assert len(headers) == 1 and headers[0]["process_index"] == 0
    info = headers[0]["run_info"]
    assert info["process_count"] == 2 and info["process_index"] == 0 and info["device_count"] == 4

    # the same rollouts (sampled texts, rewards) and the same update figures as one process
    two, one = _events(runs / "run.jsonl", "training"), _events(tmp_path / "single.jsonl", "training")
    assert [e["step"] for e in two] == [e["step"] for e in one] == [0, 1, 2]
    for a, b in zip(two, one):
        for k in ("loss", "kl", "policy_entropy", "grad_norm", "reward_mean", "reward_std"):
            assert np.isclose(a[k], b[k], rtol=RTOL, atol=ATOL), (k, a[k], b[k])
    g2, g1 = _events(runs / "run.jsonl", "group"), _events(tmp_path / "single.jsonl", "group")
    assert [g["texts"] for g in g2] == [g["texts"] for g in g1] and len(g2) == 3
    assert [g["rewards"] for g in g2] == [g["rewards"] for g in g1]
    assert two[2]["reward_mean"] > 0  # seed 1's third update has rewards: advantages move the update

    # the checkpoints (steps 2 and 3): written by both processes, each its own shards' store
    state = tmp_path / "ckpt" / "2" / "state"
    assert sorted(n for n in os.listdir(state) if n.startswith("ocdbt.process_")) == ["ocdbt.process_0",
                                                                                    "ocdbt.process_1"]
    # one process on one device resumes the two processes' step 2 and repeats their step 2
    shutil.rmtree(tmp_path / "ckpt" / "3")
    resumed = subprocess.run([sys.executable, "-m", "vlmrl.core.train", *SMALL, "--steps", "3", "--ckpt",
                              str(tmp_path / "ckpt"), "--resume", "--record", str(tmp_path / "resumed.jsonl")],
                             cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = _events(tmp_path / "resumed.jsonl", "training")
    assert [e["step"] for e in again] == [2]
    for k in ("loss", "kl", "policy_entropy", "grad_norm", "reward_mean", "reward_std"):
        assert np.isclose(again[0][k], two[2][k], rtol=RTOL, atol=ATOL), (k, again[0][k], two[2][k])


def _initialize_in_a_child(port: int, process_id: int):
    """`distributed.initialize` of process `process_id` of 2 at 127.0.0.1:`port` in a child
    with a 3 s join timeout; a UsageError prints "ERR <its line>" and exits 2."""
    code = f"""
import sys
from vlmrl.core import distributed
from vlmrl.errors import UsageError
try:
    distributed.initialize("127.0.0.1:{port}", 2, {process_id}, timeout_s=3)
except UsageError as exc:
    print("ERR", exc)
    sys.exit(2)
"""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(1), capture_output=True, text=True,
                          timeout=120)


def test_a_peer_that_never_answers_is_one_line_not_a_hang(tmp_path):
    """Process 1 of 2 with nobody listening at the coordinator: a UsageError naming the
    address once the (here shortened) join timeout passes."""
    proc = _initialize_in_a_child(_free_port(), 1)
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-2000:])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERR")]
    assert len(lines) == 1 and "cannot join 127.0.0.1:" in lines[0] and "as process 1 of 2" in lines[0], proc.stdout


def test_a_coordinator_port_already_taken_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _initialize_in_a_child(port, 0)
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-2000:])
    assert f"port {port} is not free here" in proc.stdout, proc.stdout


def test_importing_the_trainer_leaves_jax_backend_uncreated():
    """jax.distributed.initialize must run before JAX's backend exists, and the CLI imports
    the whole trainer first: no import may run a computation (the taps' probe once did)."""
    code = ("from jax._src import xla_bridge\n"
            "import vlmrl.core.train, vlmrl.core.trainer, vlmrl.core.sampling, vlmrl.instrument.tap_callback\n"
            "print(xla_bridge.backends_are_initialized())\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(1), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
