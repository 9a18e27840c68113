"""The memory planner's figures against independent computations (fast tier).

Parameter counts: transformers' own Qwen3-VL built on the meta device (no weights) and
our model's real arrays. KV pages: a plain loop over rows. CLI: bad values are one line,
exit 2; --json ends with one object holding every documented key.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from vlmrl.models.qwen3vl.config import Qwen3VLConfig
from vlmrl.models.qwen3vl.processor import ImageProcessorConfig, preprocess_images
from vlmrl.plan import cli
from vlmrl.plan.counts import kv_bytes_per_token, param_counts
from vlmrl.plan.devices import DEVICES, get_device
from vlmrl.plan.kv import PAGE_TOKENS, kv_figures
from vlmrl.plan.lengths import Lengths, LengthsError
from vlmrl.plan.planner import make_plan, per_device
from vlmrl.plan.spec import Mesh, PlanError, RunSpec

REQUIRED_KEYS = ("params_total", "weights_bytes", "optimizer_bytes", "grads_bytes", "reference_bytes",
                 "vision_tokens_per_image", "kv_bytes_per_token", "kv_bytes", "kv_bytes_paged", "activation_bytes",
                 "attention_scores_bytes_avoided", "per_device_bytes", "devices_needed", "fits", "suggestions")


def _hf_meta_param_count(config: Qwen3VLConfig) -> int:
    import torch
    from transformers import Qwen3VLConfig as HFConfig
    from transformers import Qwen3VLForConditionalGeneration

    raw = {k: v for k, v in config.to_hf_dict().items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(HFConfig(**raw))
    assert all(p.device.type == "meta" for p in model.parameters())
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", ["2b", "4b", "8b"])
def test_param_counts_equal_transformers_on_meta_device(preset):
    config = Qwen3VLConfig.preset(preset)
    assert param_counts(config)["total"] == _hf_meta_param_count(config)


def test_weights_bytes_equal_the_arrays_of_the_tiny_preset_in_both_dtypes():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vlmrl.models.qwen3vl.model import Qwen3VL

    config = Qwen3VLConfig.preset("tiny")
    for dtype, name in ((jnp.float32, "float32"), (jnp.bfloat16, "bfloat16")):
        model = Qwen3VL(config, dtype=dtype, rngs=nnx.Rngs(0))
        leaves = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
        plan = make_plan(RunSpec(config=config, dtype=name, batch=1, group=2, minibatches=1), get_device("l4"))
        assert plan["params_total"] == sum(int(x.size) for x in leaves)
        assert plan["weights_bytes"] == sum(int(x.nbytes) for x in leaves)


def test_vision_tokens_follow_the_processor_resize():
    """The planner's count equals the grid the processor gives a real image of that size."""
    for hw, proc in (((448, 448), ImageProcessorConfig()), ((300, 500), ImageProcessorConfig()),
                     ((64, 96), ImageProcessorConfig(min_pixels=64 * 96, max_pixels=64 * 96))):
        image = np.zeros(hw + (3,), np.uint8)
        pixels, grid = preprocess_images([image], proc)
        spec = RunSpec(config=Qwen3VLConfig.preset("2b"), image_hw=hw, processor=proc)
        assert spec.patches_per_image == pixels.shape[0] == int(np.prod(grid[0]))
        assert spec.vision_tokens_per_image == int(np.prod(grid[0])) // 4


def _pages_by_loop(prompt: int, lengths, per_token: int) -> int:
    return sum(math.ceil((prompt + n) / PAGE_TOKENS) for n in lengths) * PAGE_TOKENS * per_token


def test_kv_figures_contiguous_and_paged_by_a_plain_loop():
    config = Qwen3VLConfig.preset("4b")
    per_token = 2 * 36 * 8 * 128 * 2
    assert kv_bytes_per_token(config, "bfloat16") == per_token
    spec = RunSpec(config=config, batch=3, group=4, context=100, max_new=50, images=0)
    kv = kv_figures(spec)
    assert kv["kv_bytes"] == 12 * 150 * per_token
    assert kv["kv_bytes_paged"] == _pages_by_loop(100, [50] * 12, per_token)
    # uniform lengths: every length of the range equally often
    spec = spec.replace(lengths=Lengths.uniform(1, 50))
    expected = 12 * np.mean([math.ceil((100 + n) / PAGE_TOKENS) for n in range(1, 51)]) * PAGE_TOKENS * per_token
    assert kv_figures(spec)["kv_bytes_paged"] == pytest.approx(expected, abs=PAGE_TOKENS * per_token)
    # prefix sharing: the 6 full prompt pages once per prompt instead of once per sample
    shared = kv_figures(spec.replace(lengths=Lengths.fixed_at(50)))["kv_bytes_paged_shared_prompt"]
    assert shared == kv["kv_bytes_paged"] - (12 - 3) * (100 // PAGE_TOKENS) * PAGE_TOKENS * per_token


def test_lengths_from_a_recorded_log(tmp_path):
    from vlmrl.instrument.events import CreditState, RunInfo, TrainingState
    from vlmrl.instrument.record import encode_line, header_line

    path = tmp_path / "run.jsonl"
    lines = [header_line(RunInfo())]
    for step, n in enumerate([3, 5, 5, 9]):
        lines.append(encode_line(TrainingState(step=step)))
        lines.append(encode_line(CreditState(tokens=["a"] * n, credits=[0.0] * n, step=step)))
    lines.append('{"kind": "credit", "tokens": "not a list"')  # cut short: skipped
    path.write_text("\n".join(lines) + "\n")
    lengths = Lengths.parse(f"log:{path}")
    assert lengths.support(100) == ((3, 0.25), (5, 0.5), (9, 0.25))
    assert lengths.support(4) == ((3, 0.25), (4, 0.75))  # clipped to the reservation
    # a log with rollout-group events: every row's length, the credit rows not counted twice
    from vlmrl.instrument.events import GroupState

    grouped = tmp_path / "grouped.jsonl"
    lines = [header_line(RunInfo())]
    lines.append(encode_line(GroupState(step=0, group=2, texts=["a", "b", "c", "d"], tokens=[[], [], [], []],
                                         lengths=np.array([2, 2, 7, 11], np.int32))))
    lines.append(encode_line(CreditState(tokens=["a"] * 2, credits=[0.0] * 2, step=0)))
    grouped.write_text("\n".join(lines) + "\n")
    assert Lengths.parse(str(grouped)).support(100) == ((2, 0.5), (7, 0.25), (11, 0.25))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(header_line(RunInfo()) + "\n")
    with pytest.raises(LengthsError, match="no completion lengths"):
        Lengths.parse(f"log:{empty}")


def test_sharding_divides_resident_state_and_rows():
    spec = RunSpec(config=Qwen3VLConfig.preset("2b"), batch=8, group=8, context=256, max_new=256, remat=True)
    one, four = per_device(spec, Mesh()), per_device(spec, Mesh(fsdp=4))
    assert four["resident"] == pytest.approx(one["resident"] / 4)
    assert per_device(spec, Mesh(data=4))["resident"] == one["resident"]
    assert four["peak"] < one["peak"]
    with pytest.raises(PlanError, match="does not divide"):
        spec.check_mesh(Mesh(data=3))


def test_a_run_that_does_not_fit_gets_suggestions_that_lower_the_peak():
    spec = RunSpec(config=Qwen3VLConfig.preset("8b"), batch=8, group=8)
    plan = make_plan(spec, get_device("tpu-v5e"))
    assert not plan["fits"] and plan["suggestions"]
    assert all(s["per_device_bytes"] < plan["per_device_bytes"] for s in plan["suggestions"])
    small = make_plan(RunSpec(config=Qwen3VLConfig.preset("tiny"), batch=2, group=2, context=32, max_new=16),
                      get_device("h100-80"))
    assert small["fits"] and small["suggestions"] == [] and small["devices_needed"] == 1


def test_devices_table_names_a_source_for_every_device():
    assert {"h100-80", "h200", "a100-80", "a100-40", "l4", "tpu-v5e", "tpu-v5p", "tpu-v6e"} <= set(DEVICES)
    for d in DEVICES.values():
        assert d.memory_bytes > 0 and d.bandwidth_bytes_s > 0 and d.source


@pytest.mark.parametrize("argv, needle", [
    (["--batch", "-1"], "--batch"),
    (["--context", "-5"], "--context"),
    (["--device", "h900"], "unknown device"),
    (["--mesh", "data=3"], "does not divide"),
    (["--mesh", "tensor=3"], "does not divide"),
    (["--mesh", "pipeline=2"], "--mesh"),
    (["--mesh", "data=x"], "integer"),
    (["--lengths", "uniform:9:2"], "MIN"),
    (["--lengths", "log:/no/such/file.jsonl"], "no such file"),
    (["--image_size", "0x5"], "--image_size"),
    (["--dtype", "int3"], "unknown dtype"),
    (["--usable", "1.5"], "--usable"),
    (["--preset", "70b"], "invalid choice"),
    (["--model_dir", "/nonexistent/dir"], "not a directory"),
])
def test_bad_values_are_one_line_and_exit_2(argv, needle, capsys):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err


def test_model_dir_reads_config_and_preprocessor(tmp_path, capsys):
    config = Qwen3VLConfig.preset("2b")
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict()))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 4096,
                                                                             "longest_edge": 200704}}))
    assert cli.main(["--model_dir", str(tmp_path), "--image_size", "1024", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["params_total"] == param_counts(config)["total"]
    assert plan["vision_tokens_per_image"] == 196  # 1024² capped at max_pixels 448²: 28x28 patches / 2x2
    (tmp_path / "config.json").write_text("{not json")
    assert cli.main(["--model_dir", str(tmp_path)]) == 2


def test_module_entry_point_prints_a_table_and_the_json_last(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-m", "vlmrl.plan", "--preset", "4b", "--device", "tpu-v5e", "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    plan = json.loads(lines[-1])
    assert set(REQUIRED_KEYS) <= set(plan)
    assert any(line.startswith("PEAK per device") for line in lines)
    assert plan["device"] == "tpu-v5e"
