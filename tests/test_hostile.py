"""Hostile input: crafted log lines, files that are not logs, flags, --record targets and
checkpoints each end as stated (a bad line is skipped and counted, the rest plays; a bad
file or flag is one line and exit 2; nothing existing is destroyed). Memory cases run in
a child process under RLIMIT_AS, so a regression fails instead of swapping."""
from __future__ import annotations

import base64
import copy
import json
import os
import resource
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vlmrl.instrument.events import CreditState, DecodeState, TrainingState
from vlmrl.instrument.record import LINE_MAX, ReadStats, encode_line, header_line, parse_line, read_log
from vlmrl.utils.tui.plainlog import PlainLog
from vlmrl.utils.tui.store import Store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_LOG = os.path.join(REPO, "tests", "data", "tiny_run.jsonl")


def _good_decode(step: int = 1) -> dict:
    return json.loads(encode_line(DecodeState(step=step, token_text=" ok", token_prob=0.5)))


BIG = 10 ** 400  # beyond float range; json writes it as digits and reads it back as an int


def _bad_lines():
    """(id, line as bytes or JSON-able, what the count's first error names)."""
    d = _good_decode
    return [
        ("int-overflow-inline-array", {**d(), "attention_row": {"nd": "float32", "shape": [1], "v": [BIG]}},
         "bad encoded value"),
        ("int-too-big-for-dtype", {**d(), "attn_stats": {"focus": {"nd": "int8", "shape": [1, 1], "v": [1000]}}},
         "bad encoded value"),
        ("negative-unsigned", {**d(), "attn_stats": {"focus": {"nd": "uint8", "shape": [1, 1], "v": [-1]}}},
         "bad encoded value"),
        ("prob-beyond-float", {**d(), "token_prob": BIG}, "token_prob"),
        ("prob-inf", {**d(), "token_prob": {"nf": "inf"}}, "token_prob"),
        ("entropy-beyond-float", {**d(), "entropy": BIG}, "entropy"),
        ("cache-beyond-int64", {**d(), "cache_len": BIG}, "cache_len"),
        ("loss-beyond-float", {"kind": "training", "step": 2, "loss": BIG}, "loss"),
        ("reward-beyond-float", {"kind": "training", "step": 2, "reward_mean": -BIG}, "reward_mean"),
        ("credit-beyond-float", {"kind": "credit", "tokens": ["a"], "credits": [BIG]}, "credits"),
        ("string-credit", {"kind": "credit", "tokens": ["a"], "credits": ["0.5"]}, "credits"),
        ("matrix-token-types-not-strings", {"kind": "attention_matrix", "token_types": [1, 2]}, "token_types"),
        ("run-info-huge-sizes", {"kind": "run_info", "num_layers": 10 ** 300}, "num_layers"),
        ("run-info-string-size", {"kind": "run_info", "num_heads": "16"}, "num_heads"),
        ("huge-declared-shape", {**d(), "attention_row": {"nd": "float32", "shape": [10 ** 12], "b64": "AAAAAA=="}},
         "bad encoded value"),
        ("bogus-non-finite", {**d(), "entropy": {"nf": "zzz"}}, "bad encoded value"),
        ("dangling-focus-ref", {**d(), "attention_pattern": {"ref": "attn_stats.focus"}, "attn_stats": {}},
         "attn_stats.focus"),
        ("top-k-wrong-shape", {**d(), "top_k": [[1, "a"]]}, "top_k"),
        ("vision-span-strings", {**d(), "vision_span": ["a", "b"]}, "vision_span"),
        ("token-text-1mb", {**d(), "token_text": "x" * (1 << 20)}, "token_text"),
        ("stats-too-large", {**d(), "attn_stats": {"focus": {"nd": "float32", "shape": [512, 256], "b64": base64.b64encode(
            bytes(512 * 256 * 4)).decode()}}}, "attn_stats"),
        ("not-an-object", [1, 2, 3], "JSON object"),
        ("unknown-kind", {"kind": "nope"}, "unknown event kind"),
        ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, "recursion"),
        ("not-utf8", b'{"kind": "decode", "token_text": "\xff\xfe"}', "utf-8"),
        ("not-json", b"garbage", "Expecting value"),
    ]


CASES = _bad_lines()


def _as_bytes(line) -> bytes:
    return line if isinstance(line, bytes) else json.dumps(line).encode()


def _write_log(path, bad: bytes) -> None:
    good = [encode_line(DecodeState(step=1, token_text=" one", token_prob=0.5)),
            encode_line(TrainingState(step=1, reward_mean=0.25, loss=0.5))]
    with open(path, "wb") as fh:
        fh.write((header_line() + "\n" + good[0] + "\n").encode() + bad + b"\n" + (good[1] + "\n").encode())


@pytest.mark.parametrize("line,why", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_line_is_skipped_counted_and_the_rest_plays(tmp_path, line, why):
    path = tmp_path / "run.jsonl"
    _write_log(path, _as_bytes(line))
    header, events, stats = read_log(str(path))
    assert [type(e) for e in events] == [DecodeState, TrainingState]
    assert stats.garbage == 1 and why.lower() in stats.first_error.lower(), stats.first_error
    # the plain log prints the rest without an escape byte or a traceback
    out = __import__("io").StringIO()
    plain = PlainLog(out)
    for ev in events:
        plain.feed(ev)
    assert "train step 1" in out.getvalue()


@pytest.mark.parametrize("line", [c[1] for c in CASES if isinstance(c[1], dict)],
                         ids=[c[0] for c in CASES if isinstance(c[1], dict)])
def test_a_bad_event_dict_is_rejected_whole_by_the_store(line):
    store = Store(clock=lambda: 1.0)
    store.apply(DecodeState(step=1, token_text=" one", token_prob=0.5))
    store.apply(TrainingState(step=1, reward_mean=0.25))
    store.apply(CreditState(tokens=["a"], credits=[0.5], step=1))
    before = store.snapshot()
    store.apply(copy.deepcopy(line))
    after = store.snapshot()
    assert after.problems and after.problems[-1].startswith(("bad event dict", "bad "))
    for field in ("decodes", "recent", "stats", "history", "training", "credit", "run", "matrix"):
        a, b = getattr(before, field), getattr(after, field)
        assert (dict(a) == dict(b)) if hasattr(a, "keys") else a == b, field


def test_a_live_event_out_of_bounds_is_rejected_whole_with_a_notice():
    store = Store(clock=lambda: 1.0)
    store.apply(DecodeState(step=1, token_text=" one"))
    before = store.snapshot()
    for bad in (DecodeState(step=2, token_prob=float("inf")), DecodeState(step=3, cache_len=-1),
                DecodeState(step=4, token_text="x" * 5000), CreditState(tokens=["a"], credits=["x"]),
                DecodeState(step=5, top_k=[(1, 2, 3)])):
        store.apply(bad)
        snap = store.snapshot()
        assert snap.problems[-1].startswith(f"bad {bad.kind} event")
        assert snap.decode_for(0).step == 1 and dict(snap.recent) == dict(before.recent)


def test_a_header_with_a_bad_run_info_is_counted_and_the_log_plays(tmp_path):
    head = json.loads(header_line())
    head["run_info"] = {"kind": "run_info", "num_layers": -3}
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(head) + "\n" + encode_line(DecodeState(step=1)) + "\n")
    header, events, stats = read_log(str(path))
    assert header["run_info"] is None and len(events) == 1 and stats.garbage == 1
    assert "num_layers" in stats.first_error


def test_an_appended_run_brings_its_run_info(tmp_path):
    from vlmrl.instrument.events import RunInfo

    path = tmp_path / "run.jsonl"
    path.write_text(header_line(RunInfo(model_name="a")) + "\n" + encode_line(DecodeState(step=1)) + "\n"
                    + header_line(RunInfo(model_name="b")) + "\n")
    header, events, stats = read_log(str(path))
    assert header["run_info"].model_name == "a" and [getattr(e, "model_name", None) for e in events] == [None, "b"]


def test_a_line_over_the_cap_is_one_bad_line():
    stats = ReadStats()
    assert parse_line(b"{" + b" " * LINE_MAX + b"}", 7, stats) is None
    assert stats.garbage == 1 and str(LINE_MAX) in stats.first_error


# ------------------------------------------------------------------ memory, under RLIMIT_AS

def _run_limited(code: str, limit_mb: int, timeout: float = 120.0, args=()) -> subprocess.CompletedProcess:
    """Run `code` in a child Python whose address space is capped at `limit_mb`: a reader
    that buffers what it should stream gets MemoryError there, not swap here."""
    env = dict(os.environ, PYTHONPATH=REPO, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    limit = limit_mb << 20

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, preexec_fn=cap,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _peak_kb() -> str:
    return "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"


def _huge_line_log(path, mb: int, newline: bool = True) -> None:
    """A header, one good line, a `mb` MB inline-array line (10M entries at 120), a good line."""
    with open(path, "wb") as fh:
        fh.write((header_line() + "\n" + encode_line(DecodeState(step=1)) + "\n").encode())
        fh.write(b'{"kind":"decode","step":2,"attention_row":{"nd":"float32","shape":[10000000],"v":[')
        chunk = b"0.123456789," * 87381  # ~1 MiB
        for _ in range(mb):
            fh.write(chunk)
        fh.write(b"0]}}")
        if newline:
            fh.write(b"\n" + (encode_line(DecodeState(step=3)) + "\n").encode())


def test_a_120_mb_line_is_skipped_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    _huge_line_log(path, 120)
    code = f"""
        import json, sys
        from vlmrl.instrument.record import read_log
        from vlmrl.utils.tui.replay import LogFollower
        header, events, stats = read_log(sys.argv[1])
        f = LogFollower(sys.argv[1])
        polled = []
        for _ in range(10):
            polled += f.poll()
        print(json.dumps({{"steps": [e.step for e in events], "garbage": stats.garbage,
                          "attach": [e.step for e in polled], "attach_garbage": f.stats.garbage,
                          "peak_kb": {_peak_kb()}}}))
    """
    proc = _run_limited(code, 700, args=(str(path),))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    print(out)  # the measured figures, with -s
    assert out["steps"] == [1, 3] and out["garbage"] == 1
    assert out["attach"] == [1, 3] and out["attach_garbage"] == 1
    assert out["peak_kb"] < 200 << 10, out  # measured 62 MB; buffering the line took 4 GB


def test_an_unterminated_line_under_attach_is_not_buffered_without_limit(tmp_path):
    path = tmp_path / "growing.jsonl"
    _huge_line_log(path, 40, newline=False)
    code = f"""
        import json, sys
        from vlmrl.instrument.events import DecodeState
        from vlmrl.instrument.record import encode_line
        from vlmrl.utils.tui.replay import LogFollower
        f = LogFollower(sys.argv[1])
        first = [e.step for _ in range(5) for e in f.poll()]
        held = len(f._buf)
        with open(sys.argv[1], "ab") as fh:  # the writer finally ends the line and goes on
            fh.write(b"\\n" + (encode_line(DecodeState(step=3)) + "\\n").encode())
        later = [e.step for _ in range(3) for e in f.poll()]
        print(json.dumps({{"first": first, "held": held, "later": later, "garbage": f.stats.garbage,
                          "peak_kb": {_peak_kb()}}}))
    """
    proc = _run_limited(code, 600, args=(str(path),))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    print(out)  # the measured figures, with -s
    assert out["first"] == [1] and out["later"] == [3] and out["garbage"] == 1
    assert out["held"] <= LINE_MAX and out["peak_kb"] < 200 << 10, out  # measured 49 MB


ROWS = 5000  # ~80 x MAX_ROWS, and ~100 checkpoint saves at the spacing set below


def test_many_distinct_rows_replay_in_bounded_memory(tmp_path):
    """Each decode event names a new batch row: the store keeps MAX_ROWS of them (counted)
    and replay keeps at most MAX_CHECKPOINTS copies of the store."""
    with open(RUN_LOG) as fh:
        line = next(json.loads(raw) for raw in fh if '"kind":"decode"' in raw[:20])
    path = tmp_path / "rows.jsonl"
    with open(path, "w") as fh:
        fh.write(header_line() + "\n")
        for row in range(ROWS):
            line["seq_index"], line["step"] = row, row
            fh.write(json.dumps(line) + "\n")
    code = f"""
        import json, sys
        from vlmrl.utils.tui import replay
        from vlmrl.utils.tui.state import MAX_ROWS
        from vlmrl.utils.tui.store import Store
        replay.CHECKPOINT_EVERY = 50  # many saves, so the thinning is exercised
        log = replay.ReplayLog.open(sys.argv[1])
        store = log.store_at(Store)
        log.seek(log.num_steps // 3)
        back = log.store_at(Store)
        print(json.dumps({{"rows": len(store.snapshot().decodes), "max_rows": MAX_ROWS,
                          "dropped": store.rows_dropped, "checkpoints": len(log._checkpoints),
                          "max_checkpoints": replay.MAX_CHECKPOINTS, "back_rows": len(back.snapshot().decodes),
                          "problem": store.snapshot().problems[-1], "peak_kb": {_peak_kb()}}}))
    """
    proc = _run_limited(code, 1200, args=(str(path),))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    print(out)  # the measured figures, with -s
    assert out["rows"] == out["max_rows"] == out["back_rows"] and out["dropped"] == ROWS - out["max_rows"]
    assert out["checkpoints"] <= out["max_checkpoints"] and "batch rows" in out["problem"]
    assert out["peak_kb"] < 300 << 10, out  # measured 52 MB


def test_text_memos_do_not_keep_long_texts():
    from vlmrl.utils.tui.canvas import MEMO_TEXT, sanitize

    before = sanitize.cache_info().currsize
    for i in range(50):
        sanitize(f"{i}" + "é" * (1 << 16))
    assert sanitize.cache_info().currsize == before
    sanitize("é" * MEMO_TEXT + "short enough")[:1]  # noqa: B018  (over the limit: not kept either)
    sanitize("é")
    assert sanitize.cache_info().currsize <= before + 1


# ------------------------------------------------------------------ files that are not logs

def _cli(*args, timeout: float = 30.0, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "vlmrl.utils.tui_live", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _one_line_exit_2(proc, *needles) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("mode", ["--attach", "--replay"])
@pytest.mark.parametrize("what", ["directory", "fifo", "dev-zero"])
def test_a_path_that_is_not_a_log_file_is_one_line_and_exit_2(tmp_path, fifo, mode, what):
    path = {"directory": str(tmp_path), "fifo": fifo, "dev-zero": "/dev/zero"}[what]
    proc = _cli(mode, path, "--seconds", "20", timeout=15)  # a FIFO with no writer must not wait
    _one_line_exit_2(proc, path, "not a vlmrl event log")


def test_an_unreadable_file_is_one_line_and_exit_2(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "secret.jsonl"
    path.write_text(header_line() + "\n")
    path.chmod(0)
    for mode in ("--attach", "--replay"):
        _one_line_exit_2(_cli(mode, str(path)), str(path))


def test_a_huge_file_without_a_newline_is_refused_after_a_few_bytes(tmp_path):
    path = tmp_path / "zeros.jsonl"
    with open(path, "wb") as fh:
        fh.truncate(64 << 20)  # sparse: 64 MB of NULs, no newline
    _one_line_exit_2(_cli("--replay", str(path)), "not a vlmrl event log")


# ------------------------------------------------------------------ flags

@pytest.mark.parametrize("flags", [["--fps", "1e-300"], ["--fps", "nan"], ["--fps", "inf"], ["--fps", "0"],
                                   ["--seconds", "nan"], ["--seconds", "inf"], ["--seconds", "-1"],
                                   ["--force", "--synthetic"]])
def test_bad_flags_are_usage_errors(flags, capsys):
    from vlmrl.utils.tui_live import main

    with pytest.raises(SystemExit) as e:
        main(["--synthetic", *flags] if "--synthetic" not in flags else flags)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err


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
    proc = _run_limited(code, 2000, args=(str(path),))
    _one_line_exit_2(proc, str(path))


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
    proc = _run_limited(code, 2500, args=(str(tmp_path),))
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


# ------------------------------------------------------------------ threads and terminals

def test_a_dying_plain_log_says_so(capsys):
    from vlmrl.instrument.bus import Bus
    from vlmrl.utils.tui_live import LiveTUI

    r, w = os.pipe()
    try:
        bus = Bus()
        tui = LiveTUI(bus=bus, out_fd=w, in_fd=r)
        assert not tui.term.is_tty()

        def broken(event):
            raise RuntimeError("formatter bug")
        tui.plain.feed = broken
        tui.start()
        bus.publish(TrainingState(step=1))
        for _ in range(100):
            if tui.error:
                break
            __import__("time").sleep(0.05)
        tui.stop()
    finally:
        os.close(r)
        os.close(w)
    assert tui.error and "formatter bug" in tui.error
    assert "plain log stopped after an error" in capsys.readouterr().err


def test_term_dumb_gets_plain_lines_not_cursor_addressing(monkeypatch):
    import pty

    from vlmrl.utils.tui.term import Terminal

    master, slave = pty.openpty()
    try:
        monkeypatch.setenv("TERM", "dumb")
        assert not Terminal(out_fd=slave, in_fd=slave).is_tty()
        monkeypatch.setenv("TERM", "xterm")
        assert Terminal(out_fd=slave, in_fd=slave).is_tty()
    finally:
        os.close(master)
        os.close(slave)


def test_unknown_term_gets_16_colours():
    from vlmrl.utils.tui.theme import detect_color_depth

    assert detect_color_depth({"TERM": "no-such-terminal-xyz"}, terminfo=lambda t: None) == "16"


CLUSTERS = {
    "zwj-family": "\U0001F468\u200d\U0001F469\u200d\U0001F467",
    "flag": "\U0001F1FA\U0001F1F8",
    "hangul-filler": "\u3164",
    "halfwidth-hangul-filler": "\uffa0",
    "choseong-filler": "\u115f",
    "jungseong-filler": "\u1160",
}


@pytest.mark.skipif(not __import__("shutil").which("tmux"), reason="tmux binary not installed (CI installs it)")
def test_clusters_keep_the_row_geometry_in_tmux(tmp_path):
    """tmux puts the cursor where the canvas thinks the text ends, for each cluster that
    wcwidth and terminals measure differently."""
    import time

    from vlmrl.utils.tui.canvas import sanitize, text_width

    sock = f"vlmrl-hostile-{os.getpid()}"

    def tmux(*args):
        return subprocess.run(["tmux", "-u", "-L", sock, "-f", "/dev/null", *args], capture_output=True, text=True,
                              timeout=20, env=dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8")).stdout
    tmux("new-session", "-d", "-x", "80", "-y", "5", "sleep 60")
    try:
        got = {}
        for name, text in CLUSTERS.items():
            shown = sanitize(text)
            f = tmp_path / name
            f.write_text("X" + shown, encoding="utf-8")
            tmux("respawn-pane", "-k", "-t", "0", f"sh -c 'clear; cat {f}; sleep 30'")
            for _ in range(40):
                time.sleep(0.1)
                x = tmux("display-message", "-p", "-t", "0", "#{cursor_x}").strip()
                if x and x != "0":
                    break
            got[name] = (int(x) - 1, text_width(shown))
    finally:
        tmux("kill-server")
    assert all(a == b for a, b in got.values()), got


def test_a_long_replay_catches_up_over_frames_so_keys_are_read():
    """The dashboard applies at most a budget of events per frame: a huge log fills in over
    several frames (the footer says how far) instead of one frame that ignores q."""
    from vlmrl.utils.tui.replay import ReplayLog

    events = [DecodeState(step=i, seq_index=i % 3, token_text=f" t{i}", wall_time=1.0 + i) for i in range(5000)]
    log = ReplayLog(events)
    calls = 0
    while True:
        store = log.store_at(Store, budget=700)
        calls += 1
        if not log.catching_up:
            break
        assert "reading" in log.status()
    assert calls == 8 and "reading" not in log.status()
    full = ReplayLog(events).store_at(Store)
    assert {b: d.step for b, d in store.snapshot().decodes.items()} == {
        b: d.step for b, d in full.snapshot().decodes.items()} == {0: 4998, 1: 4999, 2: 4997}
