"""Hostile targets and checkpoints: --record never destroys a file or follows a link, and a
crafted checkpoint or config is refused before anything is allocated."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import one_line_exit_2, run_limited
from vlmrl.instrument.record import header_line
from vlmrl.instrument.log_read import read_log


# ------------------------------------------------------------------ --record never destroys

def _record(path, *extra, capsys=None) -> int:
    from vlmrl.utils.tui_live import main

    try:
        return main(["--synthetic", "--seconds", "0.6", "--fps", "5", "--record", str(path), *extra])
    except SystemExit as e:
        return e.code


def test_record_refuses_a_file_that_is_not_a_log_and_force_replaces_it(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("my precious notes\n")
    assert _record(path) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "--force" in err and path.read_text() == "my precious notes\n"
    assert _record(path, "--force") == 0
    header, events, stats = read_log(str(path))
    assert events and stats.garbage == 0


def test_record_appends_to_an_existing_log(tmp_path, capsys):
    path = tmp_path / "run.jsonl"
    assert _record(path) == 0
    first = path.read_bytes()
    with open(path, "ab") as fh:
        fh.write(b'{"kind":"decode","st')  # a writer killed mid-line
    assert _record(path) == 0
    assert path.read_bytes().startswith(first)
    header, events, stats = read_log(str(path))
    runs = [e for e in events if getattr(e, "model_name", "") == "qwen3vl-synthetic"]
    assert len(runs) >= 2 and stats.garbage == 1  # the cut line, and both runs play


@pytest.mark.parametrize("what", ["symlink", "directory", "missing-dir", "dev-null"])
def test_record_refuses_with_one_line(tmp_path, capsys, what):
    target = tmp_path / "target.jsonl"
    target.write_text(header_line() + "\n")
    if what == "symlink":
        path = tmp_path / "link.jsonl"
        path.symlink_to(target)
    else:
        path = {"directory": tmp_path, "missing-dir": tmp_path / "nope" / "run.jsonl", "dev-null": "/dev/null"}[what]
    assert _record(path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0], err
    assert target.read_text() == header_line() + "\n"


def test_record_on_a_full_disk_is_one_line_and_exit_2(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: the first write fails with EFBIG."""
    path = tmp_path / "run.jsonl"
    code = f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))
        from vlmrl.utils.tui_live import main
        sys.exit(main(["--synthetic", "--seconds", "1", "--record", sys.argv[1]]))
    """
    proc = run_limited(code, 2000, args=(str(path),))
    one_line_exit_2(proc, str(path))


# ------------------------------------------------------------------ checkpoints

def _small_checkpoint(directory):
    """A real two-array checkpoint (orbax), step 1; returns the step directory."""
    from vlmrl.core import checkpoint

    params, opt = {"w": np.zeros((2, 3), np.float32)}, {"m": np.zeros(3, np.float32)}
    return checkpoint.save(str(directory), 1, params, opt, np.zeros(2, np.uint32))


RESTORE_SMALL = """
    import sys, numpy as np
    from vlmrl.core import checkpoint
    try:
        checkpoint.restore(sys.argv[1], {"w": np.zeros((2, 3), np.float32)}, {"m": np.zeros(3, np.float32)})
    except checkpoint.CheckpointError as exc:
        print(exc)
"""


def test_a_checkpoint_declaring_a_4gb_array_is_refused_from_its_metadata(tmp_path):
    import tensorstore as ts

    step = _small_checkpoint(tmp_path)
    # the store itself now declares params.w as 2^30 floats (4 GiB), none of them written
    spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{step}/state/"}, "path": "params.w"}
    ts.open(spec, create=True, delete_existing=True, dtype=ts.float32, shape=[1 << 30],
            chunk_layout=ts.ChunkLayout(chunk_shape=[1 << 20])).result()
    proc = run_limited(RESTORE_SMALL, 3000, args=(str(tmp_path),))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "params.w has shape [1073741824], the model expects [2, 3]" in proc.stdout, proc.stdout


def test_a_truncated_array_file_is_one_checkpoint_error(tmp_path):
    step = _small_checkpoint(tmp_path)
    import os

    data = [os.path.join(r, f) for r, _, fs in os.walk(step) for f in fs if os.sep + "d" + os.sep in os.path.join(r, f)]
    assert data
    for path in data:
        with open(path, "r+b") as fh:
            fh.truncate(max(0, os.path.getsize(path) // 2))
    proc = run_limited(RESTORE_SMALL, 3000, args=(str(tmp_path),))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.strip().splitlines()
    assert len(out) == 1 and str(step) in out[0] and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)


def _tree_bytes(root) -> dict:
    import os

    return {os.path.relpath(os.path.join(r, f), root): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(root) for f in fs}


def test_resume_from_a_checkpoint_of_another_model_is_one_line_and_destroys_nothing(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    _small_checkpoint(tmp_path / "ckpt")
    before = _tree_bytes(tmp_path / "ckpt")
    proc = subprocess.run([sys.executable, "-m", "vlmrl.core.train", "--steps", "1", "--batch", "2", "--group", "2",
                           "--minibatches", "1", "--ckpt", str(tmp_path / "ckpt"), "--resume", "--no_compile_cache"],
                          cwd=REPO, env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=300)
    one_line_exit_2(proc, "--resume: checkpoint", "does not fit this model", "missing 209 arrays (opt.1.0.count, ", "unexpected 2 arrays (opt.m, params.w)")
    after = _tree_bytes(tmp_path / "ckpt")  # (the run keeps its tokenizer beside its checkpoints)
    assert {k: after.get(k) for k in before} == before


@pytest.mark.parametrize("meta,why", [
    ({"step": 2, "rng": [0, 1]}, "is not the step of its directory"),
    ({"step": "1", "rng": [0, 1]}, "is not the step of its directory"),
    ({"step": 1}, "rng"),
    ({"step": 1, "rng": [-1]}, "rng"),
    ({"step": 1, "rng": [0], "meta": [1]}, "meta is not a JSON object"),
    ([1, 2], "not a JSON object"),
    ("{not json", "not valid JSON"),
    ("[" * 100_000, "not valid JSON"),
])
def test_malformed_step_metadata_is_a_checkpoint_error(tmp_path, meta, why):
    from vlmrl.core import checkpoint

    step = _small_checkpoint(tmp_path)
    with open(f"{step}/meta/metadata", "w") as fh:
        fh.write(meta if isinstance(meta, str) else json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match=why):
        checkpoint.restore(str(tmp_path), {"w": np.zeros((2, 3), np.float32)}, {"m": np.zeros(3, np.float32)})


def test_a_link_inside_a_checkpoint_is_refused(tmp_path):
    import os

    from vlmrl.core import checkpoint

    step = _small_checkpoint(tmp_path / "ckpt")
    (tmp_path / "elsewhere").write_text("x")
    os.symlink(tmp_path / "elsewhere", os.path.join(step, "state", "d", "link"))
    with pytest.raises(checkpoint.CheckpointError, match="holds a symbolic link"):
        checkpoint.restore(str(tmp_path / "ckpt"), {"w": np.zeros((2, 3), np.float32)}, {"m": np.zeros(3, np.float32)})


def test_oversized_orbax_metadata_is_refused_before_orbax_reads_it(tmp_path, monkeypatch):
    from vlmrl.core import checkpoint

    step = _small_checkpoint(tmp_path)
    monkeypatch.setattr(checkpoint, "METADATA_MAX", 64)  # the real bound is 256 MiB
    with pytest.raises(checkpoint.CheckpointError, match=r"/1/_CHECKPOINT_METADATA is larger than 64 bytes"):
        checkpoint.restore(str(tmp_path), {"w": np.zeros((2, 3), np.float32)}, {"m": np.zeros(3, np.float32)})
    assert step


def test_a_foreign_directory_is_neither_read_nor_written(tmp_path):
    from vlmrl.core import checkpoint, checkpoint_dir

    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "notes.txt").write_text("mine")
    params, opt = {"w": np.zeros(2, np.float32)}, {}
    for call in (lambda: checkpoint.save(str(tmp_path), 2, params, opt, np.zeros(2, np.uint32), keep=1),
                 lambda: checkpoint.restore(str(tmp_path), params, opt)):
        with pytest.raises(checkpoint.CheckpointError, match="not a vlmrl checkpoint directory"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"] and (tmp_path / "1" / "notes.txt").read_text() == "mine"
    (tmp_path / "1" / "notes.txt").unlink()
    (tmp_path / "1").rmdir()
    (tmp_path / "latest.json").write_text("{}")
    with pytest.raises(checkpoint.CheckpointError, match="older .npz format"):
        checkpoint_dir.latest_step(str(tmp_path))


def test_hf_index_entries_outside_the_directory_are_refused(tmp_path):
    from vlmrl.models.qwen3vl.load import INDEX_FILE, _tensor_files

    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / INDEX_FILE).write_text(json.dumps({"weight_map": {"a": "../outside.safetensors", "b": "/etc/passwd",
                                                              "c": 3}}))
    problems: list = []
    assert _tensor_files(str(ckpt), problems) == {}
    assert len(problems) == 3 and all("outside the checkpoint directory" in p for p in problems)


@pytest.mark.parametrize("section,key,value", [
    ("text_config", "num_hidden_layers", 100_000), ("text_config", "num_attention_heads", 0),
    ("text_config", "hidden_size", "2048"), ("text_config", "vocab_size", -5), ("vision_config", "depth", 10 ** 9),
    ("vision_config", "num_heads", 0), ("text_config", "rope_scaling", "yes"), ("text_config", "head_dim", 1.5),
])
def test_config_sizes_are_checked_before_anything_is_built(section, key, value):
    from vlmrl.models.qwen3vl.config import CheckpointError, Qwen3VLConfig

    raw = Qwen3VLConfig.tiny().to_hf_dict()
    raw[section][key] = value
    with pytest.raises(CheckpointError, match=key):
        Qwen3VLConfig.from_hf_dict(raw)


def test_config_json_that_is_not_json_is_a_checkpoint_error(tmp_path):
    from vlmrl.models.qwen3vl.config import CheckpointError, Qwen3VLConfig

    path = tmp_path / "config.json"
    path.write_bytes(b"[" * 100_000)
    with pytest.raises(CheckpointError, match="not a readable JSON file"):
        Qwen3VLConfig.from_json_file(str(path))


def test_a_save_killed_midway_leaves_the_previous_step_restorable(tmp_path):
    """Orbax writes a step under a temporary name and renames it when done: what a killed
    save leaves behind is not a step, and the newest finished one restores."""
    from vlmrl.core import checkpoint, checkpoint_dir

    _small_checkpoint(tmp_path)
    partial = tmp_path / "2.orbax-checkpoint-tmp-1795937461"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "_METADATA").write_text("{trunc")
    assert checkpoint_dir.steps(str(tmp_path)) == [1]
    step, params, *_ = checkpoint.restore(str(tmp_path), {"w": np.ones((2, 3), np.float32)},
                                          {"m": np.ones(3, np.float32)})
    assert step == 1 and not np.asarray(params["w"]).any()
