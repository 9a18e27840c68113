"""Fuzz: lines of a real recorded run (tests/data/tiny_run.jsonl: the tiny Qwen3-VL PPO run,
3 updates, recorded with --record), mutated in types, sizes and values, then read and
replayed through the store, every panel and the plain log: no exception escapes."""
from __future__ import annotations

import io
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlmrl.instrument.log_read import ReadStats, parse_line, read_log
from vlmrl.utils.tui.layout import render_screen
from vlmrl.utils.tui.palette import COLOR
from vlmrl.utils.tui.plainlog import PlainLog
from vlmrl.utils.tui.render_cache import RenderCache
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.view import ViewState, handle_key

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
RUN_LOG = os.path.join(DATA, "tiny_run.jsonl")
# a real run recorded with its rollout groups (GroupState events), for the group and charts views
GROUP_LOG = os.path.join(DATA, "tiny_colors_seed0.jsonl")


def _lines(path: str = RUN_LOG) -> list:
    with open(path, "rb") as fh:
        raw = fh.read().split(b"\n")
    # one line of each distinct shape is enough to mutate; the repeated run_info status lines are alike
    seen, out = set(), []
    for line in raw[1:]:
        if not line.strip():
            continue
        kind = json.loads(line)["kind"]
        if kind not in seen or kind in ("decode", "training", "credit", "group"):
            seen.add(kind)
            out.append(line)
    return out


LINES = _lines() + [line for line in _lines(GROUP_LOG) if b'"kind":"group"' in line[:20]]
_, BASE_EVENTS, _ = read_log(RUN_LOG)
BASE_EVENTS = BASE_EVENTS[:40] + [e for e in read_log(GROUP_LOG)[1] if e.kind in ("group", "training")][:20]

HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2 ** 62, max_value=2 ** 80).map(lambda v: -v),
    st.just(10 ** 400), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.just("\x1b[2J\x1b]52;c;aGk=\x07"), st.just("👨\u200d👩\u200d👧🇺🇸\u3164"), st.just("x" * 5000),
    st.lists(st.integers(), max_size=4), st.lists(st.text(max_size=3), max_size=4), st.just({}),
    st.just({"nf": "inf"}), st.just({"nf": "bogus"}), st.just({"ref": "attn_stats.focus"}),
    st.builds(lambda dt, shape, v: {"nd": dt, "shape": shape, "v": v},
              st.sampled_from(["float32", "int8", "uint8", "float16", "object", "bool"]),
              st.lists(st.integers(-2, 5), max_size=3), st.lists(st.one_of(st.integers(), st.floats()), max_size=6)),
    st.builds(lambda dt, shape, b: {"nd": dt, "shape": shape, "b64": b},
              st.sampled_from(["float32", "float64", "int64"]), st.lists(st.integers(0, 10 ** 13), max_size=3),
              st.sampled_from(["", "AAAA", "AAAAAAAAAAA=", "!!!!"])),
)


def _paths(value, prefix=()):
    """Every path to a value inside the parsed line (dict keys and list indexes)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:8]):
            yield from _paths(v, prefix + (i,))


def _set(data, path, value):
    if not path:
        return value
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        if isinstance(node, dict):
            node.pop(path[-1], None)
        else:
            node.pop(path[-1])
    else:
        node[path[-1]] = value
    return data


_DELETE = object()


@st.composite
def mutated_line(draw) -> bytes:
    line = draw(st.sampled_from(LINES))
    how = draw(st.sampled_from(["value", "value", "value", "delete", "bytes", "truncate"]))
    if how == "truncate":
        return line[: draw(st.integers(0, len(line)))]
    if how == "bytes":
        at = draw(st.integers(0, len(line)))
        return line[:at] + draw(st.binary(min_size=1, max_size=8)) + line[at:]
    data = json.loads(line)
    path = draw(st.sampled_from(list(_paths(data))))
    if how == "delete" and path:
        data = _set(data, path, _DELETE)
    else:
        data = _set(data, path, draw(HOSTILE))
    return json.dumps(data).encode()


def _render_everything(store: Store, now: float) -> None:
    """Every view (dashboard, matrix, explorer, group, charts) and the dashboard's keys."""
    cache = RenderCache()
    state = store.snapshot()
    for w, h in ((120, 40), (60, 20)):
        render_screen(state, ViewState(), w, h, now, COLOR, cache=cache)
    for key in ("m", "e", "g", "c"):
        view = handle_key(ViewState(), key, state, cache)
        render_screen(state, view, 120, 40, now, COLOR, cache=cache)
    view = ViewState()
    for key in ("b", "s", "]"):  # next batch row, next stat, next layers
        view = handle_key(view, key, state, cache)
        render_screen(state, view, 120, 40, now, COLOR, cache=cache)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(mutated_line(), min_size=1, max_size=4))
def test_mutated_real_lines_never_raise_through_store_panels_and_plain_log(lines):
    stats = ReadStats()
    clock = iter(range(10 ** 6))
    store = Store(clock=lambda: 1000.0 + next(clock) * 0.05)
    out = io.StringIO()
    plain = PlainLog(out, summary_every=0.0)
    for ev in BASE_EVENTS:
        store.apply(ev)
        plain.feed(ev)
    for i, line in enumerate(lines):
        ev = parse_line(line, i + 2, stats)
        if ev is not None:
            store.apply(ev)
            plain.feed(ev)
        store.apply(json.loads(line) if _is_json_object(line) else line)  # the dict path, and junk
    plain.tick(1e9)
    _render_everything(store, 1010.0)
    assert "\x1b" not in out.getvalue()


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def test_the_fixture_is_a_real_run_that_reads_clean():
    header, events, stats = read_log(RUN_LOG)
    kinds = {e.kind for e in events}
    assert stats.garbage == 0 and stats.truncated == 0
    assert {"run_info", "decode", "training", "credit"} <= kinds
    assert header["run_info"] is not None and header["run_info"].num_layers == 2


@pytest.mark.parametrize("seed", range(3))
def test_a_replay_of_a_mutated_log_plays_to_the_end(tmp_path, seed):
    """Whole mutated logs through ReplayLog (stepping forward and back) and the plain log."""
    import random

    from vlmrl.utils.tui.replay import ReplayLog

    rng = random.Random(seed)
    with open(RUN_LOG, "rb") as fh:
        raw = fh.read().split(b"\n")
    body = []
    for line in raw[1:]:
        if line and rng.random() < 0.3:
            at = rng.randrange(len(line))
            line = line[:at] + rng.choice([b"9" * 400, b'"x"', b"[]", b"\x00", b"-1", b"null"]) + line[at + 1:]
        body.append(line)
    path = tmp_path / "mutated.jsonl"
    path.write_bytes(b"\n".join([raw[0]] + body))
    log = ReplayLog.open(str(path))
    for index in (len(log.stops) - 1, 0, len(log.stops) // 2, len(log.stops) - 1):
        log.seek(index)
        store = log.store_at(Store)
        _render_everything(store, 2000.0)
    out = io.StringIO()
    plain = PlainLog(out)
    for ev in log.events:
        plain.feed(ev)
    assert log.stats.garbage > 0 and "\x1b" not in out.getvalue()
