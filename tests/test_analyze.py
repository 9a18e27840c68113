"""`python -m vlmrl.analyze`: every reported number equals an independent numpy computation
over a really recorded run; figures and page are complete; bad input is one line and exit 2;
memory stays bounded by the longest line, not the file."""
import base64
import io
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from conftest import oracle
from vlmrl.analyze import accumulate, rowstats
from vlmrl.analyze.cli import analyze, main
from vlmrl.analyze.logstream import LogStream, Progress
from vlmrl.analyze.report import Analysis
from vlmrl.instrument.events import AttentionMatrix, DecodeState, RunInfo, TrainingState
from vlmrl.instrument.record import encode_line, header_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs the CLI with JAX made unimportable: the report must work on a laptop without it.
NO_JAX = "import sys; sys.modules['jax'] = None; from vlmrl.analyze.cli import main; sys.exit(main(sys.argv[1:]))"


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-c", NO_JAX, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A tiny PPO run recorded the way a user records one (`python -m vlmrl.core.train
    --record`): per-head statistics, attention rows, the prompt matrix (mean over layers and
    heads, the default), rollout groups, decode steps (count env, 6 new tokens)."""
    path = str(tmp_path_factory.mktemp("run") / "run.jsonl")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    res = subprocess.run([sys.executable, "-m", "vlmrl.core.train", "--env", "count", "--steps", "4", "--batch", "2",
                          "--group", "4", "--minibatches", "2", "--seed", "3", "--max_new_tokens", "6", "--quiet",
                          "--record", path], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return path


def leaves(x, path=""):
    """{json path: value} of every leaf of a report."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            out.update(leaves(v, f"{path}.{k}"))
        return out
    if isinstance(x, list):
        out = {}
        for i, v in enumerate(x):
            out.update(leaves(v, f"{path}[{i}]"))
        return out
    return {path: x}


def assert_same(report, expected):
    got = leaves({k: v for k, v in report.items() if k not in ("definitions", "not_recorded")})
    got.pop(".source.path")
    want = leaves(expected)
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    numbers = 0
    for key, value in want.items():
        if isinstance(value, float):
            numbers += 1
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        else:
            assert got[key] == value and type(got[key]) is type(value), key
    return numbers


@pytest.mark.slow
def test_every_number_in_the_report_equals_numpy_over_the_recorded_log(recorded, tmp_path):
    res = run_cli(recorded, "--out", str(tmp_path / "out"), "--no-figures")
    assert res.returncode == 0, res.stderr
    report = json.load(open(tmp_path / "out" / "report.json"))
    events = report["run"]["events"]
    # the recorded run holds what the report draws on: stats, rows, decode steps, matrices
    assert events["decode_prefill"] and events["decode_decode"] and events["attention_matrix"] == 4
    assert report["run"]["capture"]["attention_row_events"] >= 4 and report["head_stats"]["names"] == [
        "focus", "max", "vision", "sink"]
    assert report["rows"]["decode"]["events"] >= 1 and len(report["steps"]["bins"]) == 4
    assert events["group"] == 4 and report["telemetry"]["per_token"]["kl"]["count"] > 8
    numbers = assert_same(report, oracle(recorded))
    assert numbers > 300
    # bins merged (width 2 then 4) give the same numbers as grouping the updates directly
    for max_bins in (1, 2, 3):
        a = Analysis(LogStream(recorded).header)
        a.max_bins = max_bins
        stream = LogStream(recorded)
        for ev, n in stream:
            a.add(ev, n)
        got = a.report({"path": recorded, "bytes": stream.size, "lines": stream.lines, "events": stream.stats.events,
                        "garbage": 0, "truncated": 0, "first_error": "", "skipped_bytes": 0})
        want = oracle(recorded, max_bins=max_bins)
        assert got["steps"]["bin_width"] == want["steps"]["bin_width"] > 1
        assert_same(got, want)
    # other parameters are honoured (and stated)
    got, _ = analyze(recorded, window=2, mass=0.5)
    assert got["parameters"] == {"density_mass": 0.5, "diagonal_window": 2, "max_bins": 256}
    assert_same(got, oracle(recorded, window=2, mass=0.5))


@pytest.mark.slow
def test_figures_have_titles_axes_colour_bars_and_the_page_embeds_them(recorded, tmp_path):
    from vlmrl.analyze import figures

    out = tmp_path / "out"
    assert main([recorded, "--out", str(out), "--progress", "off"]) == 0
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert pngs == ["evolution.png", "heads.png", "influence.png", "matrix.png", "telemetry.png"]
    page = (out / "index.html").read_text()
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert base64.b64encode(data).decode() in page  # the very bytes, embedded
    assert "http" not in page and "<script" not in page and "src='data:image/png;base64," in page
    report = json.load(open(out / "report.json"))
    _, analysis = analyze(recorded)
    heads = figures.heads_figure(report)
    plots = [ax for ax in heads.axes if ax.get_title()]
    assert len(plots) == 4 and len(heads.axes) == 8  # one colour bar per statistic
    assert all(ax.get_xlabel() == "head" and ax.get_ylabel() == "layer" for ax in plots)
    m = analysis.last_matrix
    mat = figures.matrix_figure(report, m.matrix, m.token_types, m.key_tokens)
    ax = mat.axes[0]
    assert "prompt attention" in ax.get_title() and ax.get_xlabel() == "key token" and len(mat.axes) == 2
    vision_ticks = [t for t in ax.get_xticklabels() if t.get_color() == figures.TYPE_COLOURS["vision"]]
    assert len(vision_ticks) == m.token_types.count("vision") > 0
    evo = figures.evolution_figure(report)
    assert all(a.get_xlabel() == "update" for a in evo.axes if a.get_title())


def write_log(path, events, info=None, tail=b""):
    with open(path, "wb") as fh:
        fh.write((header_line(info) + "\n").encode())
        for ev in events:
            fh.write((encode_line(ev) + "\n").encode())
        fh.write(tail)


INFO = RunInfo(model_name="m", num_layers=2, num_heads=3)


def decode(step=1, gen=1, stats=None, **kw):
    stats = stats if stats is not None else {n: np.full((2, 3), 0.25, np.float32) for n in ("focus", "vision")}
    return DecodeState(step=step, generation=gen, phase="decode", cache_len=6, attn_stats=stats, **kw)


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage\n", b'{"kind": "decode"}\n', b"[1, 2]\n",
                                     b'{"vlmrl_log": 99, "kind": "header"}\n'])
def test_a_file_that_is_not_a_log_exits_2_with_one_line(tmp_path, content):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    res = run_cli(str(bad), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert str(bad) in res.stderr and not (tmp_path / "o" / "report.json").exists()


def test_without_matplotlib_the_report_and_page_are_written_and_the_figures_named_missing(tmp_path):
    log = tmp_path / "ok.jsonl"
    write_log(log, [decode(), TrainingState(step=0)], INFO)
    code = "import sys; sys.modules['matplotlib'] = None; " + NO_JAX.split("; ", 1)[1]
    res = subprocess.run([sys.executable, "-c", code, str(log), "--out", str(tmp_path / "o")], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "pip install 'vlmrl[report]'" in res.stderr, res.stderr
    assert sorted(os.listdir(tmp_path / "o")) == ["index.html", "report.json"]
    assert "figures skipped" in (tmp_path / "o" / "index.html").read_text()


def test_missing_file_directory_and_bad_out_exit_2(tmp_path):
    log = tmp_path / "ok.jsonl"
    write_log(log, [decode()], INFO)
    (tmp_path / "file").write_text("x")
    for args, says in (([str(tmp_path / "none.jsonl")], "No such file"), ([str(tmp_path)], "directory"),
                       ([str(log), "--window", "0"], "--window must be >= 1"),
                       ([str(log), "--mass", "2"], "--mass must be in (0, 1]")):
        res = run_cli(*args, "--out", str(tmp_path / "o"))
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and says in res.stderr, res.stderr
    res = run_cli(str(log), "--out", str(tmp_path / "file"))
    assert res.returncode == 2 and "not a directory" in res.stderr
    assert (tmp_path / "file").read_text() == "x"


def test_bad_events_are_skipped_counted_and_the_rest_reported(tmp_path):
    log = tmp_path / "h.jsonl"
    good = decode(stats={"focus": np.full((2, 3), 0.5, np.float32)})
    events = [good,
              decode(stats={"focus": np.full((4, 3), 0.5, np.float32)}),  # wrong shape
              decode(stats={"focus": np.full((2, 3), 7.0, np.float32)}),  # out of [0, 1]
              decode(stats={"focus": np.full((2, 3), np.nan, np.float32)}),
              decode(stats={}, attention_row=np.array([0.0, -1.0, 2.0], np.float32)),
              AttentionMatrix(matrix=np.ones((3, 2), np.float32), token_types=["text"] * 2),
              AttentionMatrix(matrix=np.ones((2, 2), np.float32), token_types=["text"]),
              TrainingState(step=0)]
    write_log(log, events, INFO, tail=b'{"kind": "decode", "st')
    report, _ = analyze(str(log))
    cap = report["run"]["capture"]
    assert cap["rejected"] == {"attn_stats": 3, "attention_row": 1, "matrix": 2, "group": 0}
    assert cap["head_stat_events"] == 1 and report["layers"][1]["heads"][2]["focus"] == 0.5
    assert report["source"]["truncated_lines"] == 1


def test_extreme_values_never_reach_the_report_as_nan(tmp_path):
    log = tmp_path / "x.jsonl"
    events = [TrainingState(step=0, kl=1e308), TrainingState(step=1, kl=-1e308), TrainingState(step=2, kl=1e308),
              AttentionMatrix(matrix=np.full((2, 2), 3e38, np.float32), token_types=["text"] * 2),
              decode(stats={}, attention_row=np.array([0.0, 1e30], np.float32))]
    write_log(log, events, INFO)
    out = tmp_path / "o"
    res = run_cli(str(log), "--out", str(out))
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    report = json.loads((out / "report.json").read_text())  # strict JSON: no NaN or Infinity
    assert report["run"]["capture"]["rejected"] == {"attn_stats": 0, "attention_row": 1, "matrix": 1, "group": 0}


def test_progress_bar_draws_on_a_terminal_and_clears_its_line(tmp_path):
    log = tmp_path / "p.jsonl"
    write_log(log, [decode(step=i) for i in range(300)], INFO)
    err = io.StringIO()
    stream = LogStream(str(log), progress=Progress(os.path.getsize(log), stream=err, enabled=True, interval=0.0))
    assert sum(1 for _ in stream) == 300
    frames = err.getvalue().split("\r")
    assert frames[1].startswith("analyze [") and "MB/s" in frames[1] and "100%" in frames[-2]
    assert frames[-1] == "\x1b[K"  # the bar's line is cleared when reading ends
    quiet = run_cli(str(log), "--out", str(tmp_path / "o"), "--no-figures")  # stderr not a terminal: no bar
    assert quiet.returncode == 0 and "analyze [" not in quiet.stderr and quiet.stderr.count("\n") == 1


def test_long_lines_are_skipped_without_being_held_and_memory_stays_bounded(tmp_path):
    log = tmp_path / "big.jsonl"
    row = decode(attention_row=np.linspace(0.0, 1.0, 4000).astype(np.float32), vision_span=(2, 10))
    line = (encode_line(row) + "\n").encode()
    huge = b'{"kind": "decode", "pad": "' + b"x" * (3 << 20) + b'"}\n'
    with open(log, "wb") as fh:
        fh.write((header_line(INFO) + "\n").encode())
        fh.write(huge)
        for i in range(1200):  # ~26 MB of real lines
            fh.write(line)
    tracemalloc.start()
    stream = LogStream(str(log), max_line=1 << 20)
    a = Analysis(stream.header)
    for ev, n in stream:
        a.add(ev, n)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert stream.stats.garbage == 1 and "longer than" in stream.stats.first_error
    assert a.row_events == 1200 and os.path.getsize(log) > 25e6
    assert peak < 6e6  # a few 1 MiB buffers at a time, not the 26 MB file


def test_bins_stay_bounded_and_exact_over_many_updates():
    a = Analysis({"run_info": INFO})
    values = []
    for step in range(1000):
        v = (step % 7) / 10
        a.add(decode(stats={"vision": np.full((2, 3), v, np.float32)}))
        a.add(TrainingState(step=step, reward_mean=float(step)))
        values.append(v)
    assert len(a.bins) <= 256 and a.bin_width == 4
    rep = a.report({"path": "-", "bytes": 0, "lines": 0, "events": 0, "garbage": 0, "truncated": 0,
                    "first_error": "", "skipped_bytes": 0})
    for b in rep["steps"]["bins"]:
        lo, hi = b["updates"]
        assert b["heads"]["vision"]["mean"] == pytest.approx(np.mean(np.float32(values[lo:hi + 1])), abs=1e-12)
        assert b["training"]["reward_mean"] == pytest.approx(np.mean(np.arange(lo, hi + 1)))


def test_running_summary_matches_numpy_even_when_values_barely_differ():
    rng = np.random.default_rng(0)
    for xs in (rng.normal(3.5, 1e-7, 1000), rng.normal(0, 1, 37)):
        a, b = accumulate.Summary(), accumulate.Summary()
        for x in xs[:10]:
            a.add(float(x))
        for x in xs[10:]:
            b.add(float(x))
        a.merge(b)
        got = a.to_json()
        assert got["mean"] == pytest.approx(xs.mean(), rel=1e-12)
        assert got["std"] == pytest.approx(xs.std(), rel=1e-6)


def test_row_statistics_by_hand():
    stats, start, _ = rowstats.row_stats(np.array([0, 0, 0.5, 0.25, 0.25]), np.array([0, 0, 0, 1, 0], bool), window=2)
    assert start == 2 and stats["sink"] == 0.5 and stats["vision"] == 0.25 and stats["diagonal"] == 0.5
    assert stats["entropy"] == pytest.approx(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)))
    assert stats["density"] == 1.0  # 0.5 + 0.25 < 0.9
    assert rowstats.row_stats(np.zeros(4)) is None


def test_token_labels_cannot_smuggle_control_sequences():
    from vlmrl.analyze.figures import label

    assert label("\x1b[31mred") == "\\x1b[31mred"
    assert label("a\u202eb") == "a\\u202eb"
    assert len(label("x" * 100)) == 12


def test_evolution_columns_sit_at_their_updates_with_gaps_left_empty():
    from vlmrl.analyze.figures import _bin_columns

    edges, grid = _bin_columns([{"bin": 0}, {"bin": 1}, {"bin": 4}], 2, [[0.1], [0.2], [0.3]], 1)
    assert edges.tolist() == [-0.5, 1.5, 3.5, 7.5, 9.5]  # updates 0-1, 2-3, (4-7 empty), 8-9
    assert np.isnan(grid[0, 2]) and grid[0, [0, 1, 3]].tolist() == [0.1, 0.2, 0.3]


@pytest.mark.slow
def test_a_log_of_two_appended_runs_says_so_and_reports_the_last_run_only(tmp_path):
    """`--record` twice onto one file (the second run appends); the analysis is of the last
    run, and equals the oracle over that run's lines alone."""
    path = tmp_path / "two.jsonl"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    for flags in (["--env", "colors", "--steps", "2", "--seed", "3"], ["--env", "count", "--steps", "3", "--seed", "4"]):
        res = subprocess.run([sys.executable, "-m", "vlmrl.core.train", *flags, "--batch", "2", "--group", "2",
                              "--minibatches", "1", "--quiet", "--record", str(path)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
    lines = path.read_bytes().split(b"\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(b'{"vlmrl_log":')]
    assert len(starts) == 2 and starts[0] == 0
    last = tmp_path / "last.jsonl"
    last.write_bytes(b"\n".join(lines[starts[-1]:]))

    res = run_cli(str(path), "--out", str(tmp_path / "out"), "--no-figures")
    assert res.returncode == 0, res.stderr
    assert f"the log holds 2 runs (appended by --record); analysed the last, from line {starts[-1] + 1}" in res.stderr
    report = json.load(open(tmp_path / "out" / "report.json"))
    assert report["source"]["runs"] == 2 and report["source"]["run_first_line"] == starts[-1] + 1
    # directly from the last run's lines: its updates, its device line (header), its end
    own = [json.loads(line) for line in lines[starts[-1]:] if line.strip()]
    steps = [d["step"] for d in own if d.get("kind") == "training"]
    assert report["run"]["updates"] == {"count": 3, "first": steps[0], "last": steps[-1]} and steps == [0, 1, 2]
    end = [d for d in own if d.get("kind") == "run_end"]
    assert len(end) == 1 and report["run"]["end"] == {k: end[0][k] for k in ("reason", "step", "seconds")}
    assert report["run"]["shape"]["max_cache"] == own[0]["run_info"]["max_cache"]
    # and every number equals the oracle over those lines alone; only the file's own counts differ
    want = oracle(str(last))
    for key in ("lines", "events", "runs", "run_first_line"):
        report["source"].pop(key), want["source"].pop(key)
    assert report["run"].pop("bytes")["by_kind"] == want["run"].pop("bytes")["by_kind"]
    assert assert_same(report, want) > 100
