"""Hostile log lines and files that are not logs: a bad line is skipped and counted and the
rest plays; a bad file or flag is one line and exit 2."""
from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys

import pytest

from conftest import one_line_exit_2
from vlmrl.instrument.events import CreditState, DecodeState, TrainingState
from vlmrl.instrument.record import encode_line, header_line
from vlmrl.instrument.log_read import LINE_MAX, ReadStats, parse_line, read_log
from vlmrl.utils.tui.plainlog import PlainLog
from vlmrl.utils.tui.store import Store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# ------------------------------------------------------------------ files that are not logs

def _cli(*args, timeout: float = 30.0, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "vlmrl.utils.tui_live", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


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
    one_line_exit_2(proc, path, "not a vlmrl event log")


def test_an_unreadable_file_is_one_line_and_exit_2(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "secret.jsonl"
    path.write_text(header_line() + "\n")
    path.chmod(0)
    for mode in ("--attach", "--replay"):
        one_line_exit_2(_cli(mode, str(path)), str(path))


def test_a_huge_file_without_a_newline_is_refused_after_a_few_bytes(tmp_path):
    path = tmp_path / "zeros.jsonl"
    with open(path, "wb") as fh:
        fh.truncate(64 << 20)  # sparse: 64 MB of NULs, no newline
    one_line_exit_2(_cli("--replay", str(path)), "not a vlmrl event log")


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
