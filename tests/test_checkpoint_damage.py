"""Damaged checkpoints and runs that go non-finite, through the real training CLI: a resume
never trains on NaN, a NaN update never saves (so it never prunes a good checkpoint), and
every refusal is one line, exit 2, with the checkpoint directory exactly as it was."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, one_line_exit_2
from vlmrl.core import checkpoint, checkpoint_dir

SMALL = ["--env", "colors", "--batch", "2", "--group", "2", "--minibatches", "1", "--seed", "3"]


def train(*flags):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "vlmrl.core.train", *SMALL, *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def tree_bytes(root) -> dict:
    return {os.path.relpath(os.path.join(r, f), root): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(root) for f in fs}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A real run's checkpoint directory: steps 1 and 2 of 2 updates."""
    ckpt = tmp_path_factory.mktemp("good") / "ckpt"
    proc = train("--steps", "2", "--ckpt_every", "1", "--ckpt", str(ckpt))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoint_dir.steps(str(ckpt)) == [1, 2]
    return ckpt


@pytest.fixture
def ckpt(good_run, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(good_run, copy)
    return copy


def largest_data_file(step_dir) -> str:
    data = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
    return max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)


def test_resume_from_a_checkpoint_holding_nan_is_one_line_and_writes_nothing(ckpt):
    import tensorstore as ts

    # Junk bytes at a fixed offset of a data file land wherever orbax's (thread-ordered) file
    # layout put something: a float the restore reads, or bytes it never reads, so the run
    # sometimes resumed on a checkpoint as good as before. A NaN written into the store's
    # token embedding is damage every restore reads.
    spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{ckpt / '2'}/state/"},
            "path": "params.model.language_model.embed_tokens.embedding.value"}
    ts.open(spec).result()[3, 1].write(np.float32(np.nan)).result()
    before = tree_bytes(ckpt)
    proc = train("--steps", "4", "--ckpt_every", "1", "--ckpt", str(ckpt), "--resume")
    # where the junk lands decides what it decodes to: NaN (refused at restore) or absurd
    # finite values (the first update's loss is NaN); either way the run stops at once
    one_line_exit_2(proc)
    err = proc.stderr.strip()
    assert (f"checkpoint {ckpt}/2: array " in err and "NaN or infinite" in err) or \
        ("update 2 gave a non-finite loss nan" in err and "stopped without saving" in err), err
    assert "nan" not in proc.stdout  # no update line of a NaN loss
    assert tree_bytes(ckpt) == before  # nothing saved, nothing pruned


def test_restore_names_the_step_and_the_first_array_holding_nan(tmp_path):
    import tensorstore as ts

    params, opt = {"a": np.ones(4, np.float32), "w": np.ones((2, 3), np.float32)}, {"m": np.zeros(3, np.float32)}
    step = checkpoint.save(str(tmp_path), 1, params, opt, np.zeros(2, np.uint32))
    spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{step}/state/"}, "path": "params.w"}
    ts.open(spec).result()[1, 2].write(np.float32(np.nan)).result()  # the store now holds a NaN
    with pytest.raises(checkpoint.CheckpointError, match=rf"checkpoint {step}: array params.w holds NaN"):
        checkpoint.restore(str(tmp_path), params, opt)


def test_an_update_gone_non_finite_stops_the_run_and_keeps_the_good_checkpoints(ckpt):
    before = tree_bytes(ckpt)
    # a learning rate of 1e38 sends the weights to the edge of float32: the next loss is NaN
    proc = train("--steps", "5", "--ckpt_every", "1", "--ckpt", str(ckpt), "--resume", "--lr", "1e38")
    one_line_exit_2(proc, "update 2 gave a non-finite loss nan", "stopped without saving")
    assert "resumed from" in proc.stdout
    assert tree_bytes(ckpt) == before and checkpoint_dir.steps(str(ckpt)) == [1, 2]


def test_save_refuses_non_finite_arrays_and_writes_nothing(tmp_path):
    params = {"w": np.array([1.0, np.inf], np.float32)}
    opt = (np.int32(3), {"mu": np.zeros(2, np.float32)})
    with pytest.raises(checkpoint.CheckpointError, match=r"not saving step 1 .* array params.w holds NaN"):
        checkpoint.save(str(tmp_path / "c"), 1, params, opt, np.zeros(2, np.uint32))
    assert not (tmp_path / "c").exists()
    opt = (np.int32(3), {"mu": np.array([0.0, np.nan], np.float32)})
    with pytest.raises(checkpoint.CheckpointError, match=r"array opt.1.mu holds NaN"):
        checkpoint.save(str(tmp_path / "c"), 1, {"w": np.ones(2, np.float32)}, opt, np.zeros(2, np.uint32))


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_resume_without_a_checkpoint_says_so_and_starts_at_step_0(tmp_path, state):
    ckpt = tmp_path / "ckpt"
    if state == "empty":
        ckpt.mkdir()
    proc = train("--steps", "1", "--ckpt", str(ckpt), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [ln for ln in proc.stdout.splitlines() if "no checkpoint found" in ln]
    assert said == [f"--resume: no checkpoint found in {ckpt}; starting at step 0"], proc.stdout
    assert "step    0" in proc.stdout and checkpoint_dir.steps(str(ckpt)) == [1]


def test_a_truncated_data_file_names_the_step_and_the_array_in_one_line(ckpt):
    path = largest_data_file(ckpt / "2")
    with open(path, "r+b") as fh:
        fh.truncate(1000)
    before = tree_bytes(ckpt)
    proc = train("--steps", "4", "--ckpt", str(ckpt), "--resume")
    one_line_exit_2(proc, f"--resume: checkpoint {ckpt}/2: array ", "cannot be read (its data is missing")
    for internal in ("TensorStore", "pybind11", "slice(", "Exception"):
        assert internal not in proc.stderr, proc.stderr
    name = proc.stderr.split(": array ")[1].split()[0]
    assert name.startswith(("params.", "opt.")) and len(proc.stderr) < 300, proc.stderr
    assert tree_bytes(ckpt) == before


def test_resume_of_another_env_names_the_identity_not_the_shapes(ckpt):
    before = tree_bytes(ckpt)
    proc = train("--env", "count", "--steps", "4", "--ckpt", str(ckpt), "--resume")
    one_line_exit_2(proc, f"--resume: checkpoint in {ckpt} was made with {{'env': 'colors'",
                    "this run is {'env': 'count'")
    assert "shape" not in proc.stderr
    assert tree_bytes(ckpt) == before


# ---- orbax's step metadata and our marker: both required, damage is one line ------------

def test_a_garbled_orbax_step_metadata_is_one_line_with_no_absl_lines(ckpt):
    (ckpt / "2" / "_CHECKPOINT_METADATA").write_bytes(b"garbage\n")
    before = tree_bytes(ckpt)
    proc = train("--steps", "4", "--ckpt", str(ckpt), "--resume")
    one_line_exit_2(proc, f"--resume: checkpoint {ckpt}/2 is damaged", "_CHECKPOINT_METADATA is not a JSON object")
    assert "absl" not in proc.stderr and "resumed" not in proc.stdout
    assert tree_bytes(ckpt) == before


@pytest.mark.parametrize("damage", ["missing", "a list", "older step"])
def test_orbax_step_metadata_is_required_of_every_step(tmp_path, capfd, damage):
    params, opt = {"w": np.ones(3, np.float32)}, {"m": np.zeros(3, np.float32)}
    for step in (1, 2):
        checkpoint.save(str(tmp_path), step, params, opt, np.zeros(2, np.uint32))
    target = tmp_path / ("1" if damage == "older step" else "2") / "_CHECKPOINT_METADATA"
    if damage == "missing":
        target.unlink()
    else:
        target.write_text("[1, 2]" if damage == "a list" else "{garbled")
    capfd.readouterr()
    with pytest.raises(checkpoint.CheckpointError, match=f"checkpoint {target.parent} is damaged"):
        checkpoint.restore(str(tmp_path), params, opt)
    with pytest.raises(checkpoint.CheckpointError, match=f"checkpoint {target.parent} is damaged"):
        checkpoint.save(str(tmp_path), 3, params, opt, np.zeros(2, np.uint32))
    assert checkpoint_dir.steps(str(tmp_path)) == [1, 2]  # nothing saved, nothing pruned
    assert "absl" not in capfd.readouterr().err


@pytest.mark.parametrize("marker", [b"garbage", b'{"format": "other"}', b"", b"[" * 10_000],
                         ids=["garbage", "other-json", "empty", "deep"])
def test_a_garbled_marker_is_refused_in_one_line(ckpt, marker):
    (ckpt / checkpoint_dir.MARKER).write_bytes(marker)
    before = tree_bytes(ckpt)
    with pytest.raises(checkpoint.CheckpointError, match=f"marker {ckpt}/{checkpoint_dir.MARKER} "):
        checkpoint_dir.latest_step(str(ckpt))
    if marker == b"garbage":  # and through the CLI: one line, nothing written
        proc = train("--steps", "4", "--ckpt", str(ckpt), "--resume")
        one_line_exit_2(proc, f"--ckpt: checkpoint directory marker {ckpt}/{checkpoint_dir.MARKER} is not the vlmrl marker")
    assert tree_bytes(ckpt) == before


# ---- what a plain run says ------------------------------------------------------------------

def test_a_plain_mesh_run_names_its_devices_first_and_each_saved_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-m", "vlmrl.core.train", *SMALL, "--steps", "2", "--ckpt_every", "1",
                           "--ckpt", str(ckpt), "--mesh", "data=2,fsdp=2"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "devices 4 · data 2 fsdp 2 · cpu · tiny-rl on colors · 2 updates", lines[:3]
    saved = [ln for ln in lines if ln.startswith("checkpoint of step")]
    assert saved == [f"checkpoint of step {n} saved in {ckpt}/{n}" for n in (1, 2)], proc.stdout
    assert checkpoint_dir.steps(str(ckpt)) == [1, 2]
