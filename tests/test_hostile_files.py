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

def _npy_member(shape, dtype="<f4", payload=b"") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


def test_a_checkpoint_declaring_a_4gb_array_is_refused_from_its_header(tmp_path):
    import zipfile

    from vlmrl.core import checkpoint

    params, opt = {"w": np.zeros((2, 3), np.float32)}, {"m": np.zeros(3, np.float32)}
    checkpoint.save(str(tmp_path), 1, params, opt, np.zeros(2, np.uint32))
    npz = tmp_path / "step_000001.npz"
    with zipfile.ZipFile(npz, "w") as zf:
        zf.writestr("params['w'].npy", _npy_member((1 << 30,), payload=b"\0" * 4096))  # declares 4 GB
        zf.writestr("opt['m'].npy", _npy_member((3,), payload=b"\0" * 4))  # declares 12 bytes, holds 4
    code = f"""
        import sys, numpy as np
        from vlmrl.core import checkpoint
        try:
            checkpoint.restore(sys.argv[1], {{"w": np.zeros((2, 3), np.float32)}}, {{"m": np.zeros(3, np.float32)}})
        except checkpoint.CheckpointError as exc:
            print(exc)
    """
    proc = run_limited(code, 2500, args=(str(tmp_path),))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "has shape [1073741824]" in proc.stdout and "shorter than its declared shape" in proc.stdout


@pytest.mark.parametrize("manifest,why", [
    ({"step": 1, "file": "../../etc/passwd", "rng": [0, 1]}, "not a checkpoint file name"),
    ({"step": 1, "file": "/etc/passwd", "rng": [0, 1]}, "not a checkpoint file name"),
    ({"step": 1, "file": "step_000001.npz/../../x.npz", "rng": [0, 1]}, "not a checkpoint file name"),
    ({"step": "1", "file": "step_000001.npz", "rng": [0, 1]}, "step"),
    ({"step": 1, "file": "step_000001.npz"}, "rng"),
    ({"step": 1, "file": "step_000001.npz", "rng": [-1]}, "rng"),
    ([1, 2], "not a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_a_malformed_manifest_is_a_checkpoint_error(tmp_path, manifest, why):
    from vlmrl.core import checkpoint

    (tmp_path / checkpoint.MANIFEST).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    with pytest.raises(checkpoint.CheckpointError, match=why):
        checkpoint.restore(str(tmp_path), {"w": np.zeros(1)}, {})


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
