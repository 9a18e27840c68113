"""What a run on several devices shows: its devices and mesh in the header and the plain
log, and memory per device and summed in the KV panel (from a real 4-device run's log on
fake CPU devices, which report no per-device memory, and from a RunInfo as a GPU backend
fills it). RunInfo's new fields round-trip the log and are bounded like every field."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from conftest import on_terminal, run_info, store_of
from vlmrl.instrument.events import decode_event, encode_event
from vlmrl.utils.tui.palette import COLOR
from vlmrl.utils.tui.panels import kvcache
from vlmrl.utils.tui.plainlog import PlainLog
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.view import ViewState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mesh_log(tmp_path_factory):
    """The log of a real 2-update run on 4 fake CPU devices, mesh data=2,fsdp=2."""
    path = str(tmp_path_factory.mktemp("mesh") / "run.jsonl")
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-m", "vlmrl.core.train", "--batch", "2", "--group", "4", "--steps", "2",
                           "--mesh", "data=2,fsdp=2", "--record", path, "--quiet", "--no_compile_cache"],
                          env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


@pytest.mark.slow
def test_a_real_4_device_run_shows_its_mesh_and_says_cpu_reports_no_device_memory(mesh_log):
    store = store_of(mesh_log)
    run = store.snapshot().run
    assert (run.device_count, run.mesh_shape, run.process_count) == (4, (2, 2, 1), 1)
    assert run.devices_memory_in_use == () and run.memory_source == "host"  # CPU: nothing per device
    _, screen = on_terminal(store.snapshot(), ViewState(), (160, 48))
    text = "\n".join(screen.display)
    assert "devices 4 · data 2 fsdp 2" in screen.display[0] + screen.display[1]
    assert "per device n/a, cpu reports none · 4 devices" in text
    assert "host " in text  # the process's resident memory, named as such


def test_gpu_like_per_device_memory_is_shown_per_device_and_summed():
    gib = 1 << 30
    run = run_info(device_count=4, mesh_shape=(1, 4, 1), device_kind="NVIDIA H100",
                   devices_memory_in_use=(3 * gib, 2 * gib, 2 * gib, gib // 2),
                   devices_memory_limit=(80 * gib,) * 4)
    store = Store()
    store.apply(run)
    text = kvcache.render(store.snapshot(), ViewState(), 90, 8, 0.0, COLOR).text()
    assert "devices Σ 7.5/320.0 GiB" in text
    assert "per device GiB 3.0 2.0 2.0 0.5" in text


def test_one_device_run_shows_no_mesh():
    store = Store()
    store.apply(run_info())
    _, screen = on_terminal(store.snapshot(), ViewState(), (160, 48))
    assert "devices" not in "\n".join(screen.display) and "per device" not in "\n".join(screen.display)


def test_plain_log_names_the_mesh():
    line = PlainLog(stream=None).run_line(run_info(device_count=8, process_count=2, mesh_shape=(4, 2, 1)))
    assert line.endswith("x 8 · data 4 fsdp 2 · 2 procs")


def test_run_info_scale_fields_round_trip_and_are_bounded():
    info = run_info(device_count=8, process_count=2, mesh_shape=(2, 2, 2), devices_memory_in_use=(1, 2),
                    devices_memory_limit=(10, 20))
    assert decode_event(encode_event(info)) == info
    for bad in (dict(mesh_shape=(2, 2)), dict(device_count=0), dict(devices_memory_in_use=(-1,)),
                dict(mesh_shape=(0, 1, 1)), dict(devices_memory_limit=(1.5,))):
        data = encode_event(dataclasses.replace(info, **bad))
        with pytest.raises(ValueError):
            decode_event(data)
