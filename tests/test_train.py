"""Training CLI: bad input exits 2 with a clear message; checkpoints round-trip and resume exactly;
events reach the bus and the recorder."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from vlmrl.core import checkpoint, checkpoint_dir

from conftest import tree_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--batch", "2", "--group", "4", "--minibatches", "2", "--seed", "3"]


def run_cli(*flags, timeout=600):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "vlmrl.core.train", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flags, message", [
    (["--nope"], "unrecognized arguments: --nope"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--steps", "two"], "argument --steps: invalid int value: 'two'"),
    (["--env", "mnist"], "--env 'mnist': choose one of ['colors', 'count']"),
    (["--group", "1"], "--group must be >= 2"),
    (["--batch", "3", "--group", "3", "--minibatches", "2"], "9 rows do not split into --minibatches 2"),
    (["--resume"], "--resume needs --ckpt DIR"),
    (["--model", "huge"], "--model 'huge': only 'tiny' is built in"),
    (["--lr_final", "2"], "--lr_final must be a fraction of --lr in [0, 1], got 2.0"),
    (["--coordinator", "127.0.0.1:1234"], "a multi-process run needs all of --coordinator HOST:PORT"),
    (["--coordinator", "nohost", "--num_processes", "2", "--process_id", "0"], "expected HOST:PORT"),
    (["--coordinator", "h:1", "--num_processes", "2", "--process_id", "2"], "--process_id must be in 0 .. 1, got 2"),
])
def test_bad_flags_exit_2_naming_the_culprit(flags, message):
    res = run_cli(*flags)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_model_dir_exits_2(tmp_path):
    res = run_cli("--model_dir", str(tmp_path / "missing"))
    assert res.returncode == 2 and "is not a directory" in res.stderr
    res = run_cli("--model_dir", str(tmp_path))
    assert res.returncode == 2 and "missing config.json, tokenizer.json" in res.stderr
    for name, text in (("config.json", "{not json"), ("tokenizer.json", "{}"), ("model.safetensors", "junk")):
        (tmp_path / name).write_text(text)
    res = run_cli("--model_dir", str(tmp_path), "--steps", "1")
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"cannot load --model_dir {str(tmp_path)!r}" in res.stderr
    assert "Traceback" not in res.stderr


def test_checkpoint_round_trip_is_exact_and_keeps_the_newest_two(tmp_path):
    params = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.ones(2, np.float32)]}
    opt = (np.int32(7), {"mu": np.full((2, 3), 0.5, np.float32)})
    for step in (1, 2, 3):
        checkpoint.save(str(tmp_path), step, params, opt, np.array([0, 42], np.uint32), {"seed": 1})
    files = sorted(os.listdir(tmp_path))
    assert files == ["2", "3", checkpoint_dir.MARKER]  # keeps 2; orbax's temporary directories are gone
    assert checkpoint_dir.steps(str(tmp_path)) == [2, 3] and checkpoint_dir.latest_step(str(tmp_path)) == 3
    zeros = ({"a": np.zeros((2, 3), np.float32), "b": [np.zeros(2, np.float32)]},
             (np.int32(0), {"mu": np.zeros((2, 3), np.float32)}))
    step, p, o, rng, meta = checkpoint.restore(str(tmp_path), *zeros)
    assert step == 3 and meta == {"seed": 1} and rng.tolist() == [0, 42]
    assert tree_equal(p, params) and tree_equal(o, opt)
    assert isinstance(o, tuple) and isinstance(p["b"], list)  # the template's tree, not orbax's
    with pytest.raises(ValueError, match=r"params.a has shape \[2, 3\], the model expects \[3, 2\]"):
        checkpoint.restore(str(tmp_path), {"a": np.zeros((3, 2), np.float32), "b": [np.zeros(2, np.float32)]}, zeros[1])
    with pytest.raises(ValueError, match=r"params.a has dtype float32, the model expects bfloat16"):
        checkpoint.restore(str(tmp_path), {"a": np.zeros((2, 3), jnp.bfloat16), "b": [np.zeros(2, np.float32)]},
                           zeros[1])
    with pytest.raises(ValueError, match=r"missing params.c.0; unexpected params.b.0"):
        checkpoint.restore(str(tmp_path), {"a": zeros[0]["a"], "c": [np.zeros(2, np.float32)]}, zeros[1])
    assert checkpoint_dir.latest_step(str(tmp_path / "none")) is None


@pytest.mark.slow
def test_resume_continues_the_same_curve_and_events_flow(tmp_path):
    from vlmrl.core.cli import parse_args
    from vlmrl.core.trainer import Trainer
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.events import CreditState, DecodeState, TrainingState, UpdateStats
    from vlmrl.instrument.taps import TapConfig

    ckpt = str(tmp_path / "ckpt")
    args = parse_args([*SMALL, "--steps", "4", "--ckpt", ckpt])
    bus = Bus(capacity=10_000)
    sub = bus.subscribe("test", capacity=10_000)
    trainer = Trainer(args, bus=bus, tap=TapConfig(enabled=True))
    first = [trainer.train_step() for _ in range(2)]
    trainer.save(ckpt)
    straight = [trainer.train_step() for _ in range(2)]
    # events: one TrainingState and one CreditState per update, DecodeState from the sampler taps
    events = sub.drain()
    kinds = [type(e) for e in events]
    assert kinds.count(TrainingState) == 4 and kinds.count(CreditState) == 4
    assert DecodeState in kinds
    # the update taps: one UpdateStats per update, keyed by the update's step
    assert sorted(e.step for e in events if isinstance(e, UpdateStats)) == [0, 1, 2, 3]
    credit = [e for e in events if isinstance(e, CreditState)][-1]
    assert len(credit.tokens) == len(credit.credits) >= 1 and all(np.isfinite(credit.credits))
    ts = [e for e in events if isinstance(e, TrainingState)]
    assert [t.step for t in ts] == [0, 1, 2, 3] and ts[0].reward_mean == first[0]["reward/mean"]

    # same process: restoring the step-2 checkpoint replays steps 2 and 3 exactly
    assert trainer.restore(ckpt) and trainer.step == 2
    again = [trainer.train_step() for _ in range(2)]
    for a, b in zip(straight, again):
        assert a["reward/mean"] == b["reward/mean"] and a["loss/total"] == b["loss/total"]

    # a fresh process resuming from the same checkpoint prints the same curve
    res = run_cli(*SMALL, "--steps", "4", "--ckpt", ckpt, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout and "at step 2" in res.stdout
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("step")]
    assert [int(ln.split()[1]) for ln in lines] == [2, 3]
    for ln, m in zip(lines, straight):
        want = f"reward {m['reward/mean']:.3f}±{m['reward/std']:.3f}  loss {m['loss/total']:+.4f}"
        assert want in ln
    assert checkpoint_dir.latest_step(ckpt) == 4


@pytest.mark.slow
def test_model_dir_trains_a_hugging_face_checkpoint(tmp_path):
    """--model_dir: config.json + safetensors + tokenizer.json, loaded like a real checkpoint."""
    from vlmrl.core.rollout import init_model, tiny_config
    from vlmrl.core.train import run_training
    from vlmrl.envs.shapes import ColorsEnv
    from vlmrl.core.rollout import load_codec
    from vlmrl.envs.tokenizer import write_tokenizer_dir
    from vlmrl.instrument.bus import Bus
    from vlmrl.models.qwen3vl.load import save_hf_checkpoint

    d = str(tmp_path / "hf")
    codec = load_codec(write_tokenizer_dir(d, ColorsEnv().answers))
    save_hf_checkpoint(init_model(tiny_config(codec), seed=5), d)
    history = run_training(["--model_dir", d, *SMALL, "--steps", "2", "--quiet"], bus=Bus())
    assert [m["step"] for m in history] == [0, 1]
    assert all(np.isfinite(m["loss/total"]) for m in history)


def test_init_model_is_hf_style_and_starts_near_uniform(tmp_path):
    import jax.numpy as jnp
    from flax import nnx

    from vlmrl.core.rollout import init_model, tiny_config
    from vlmrl.envs.shapes import ColorsEnv
    from vlmrl.core.rollout import load_codec
    from vlmrl.envs.tokenizer import write_tokenizer_dir

    codec = load_codec(write_tokenizer_dir(str(tmp_path), ColorsEnv().answers))
    config = tiny_config(codec)
    assert config.text.vocab_size == codec.vocab_size < 64
    assert config.image_token_id == codec.token_id("<|image_pad|>")
    assert config.text.eos_token_id == codec.token_id("<|im_end|>")
    flat = {".".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(init_model(config, seed=1)))}
    again = {".".join(map(str, p)): np.asarray(v.get_value())
             for p, v in nnx.to_flat_state(nnx.state(init_model(config, seed=1)))}
    emb = flat["model.language_model.embed_tokens.embedding"]
    assert abs(emb.std() - 0.02) < 0.002 and np.array_equal(emb, again["model.language_model.embed_tokens.embedding"])
    assert np.all(flat["model.language_model.norm.weight"] == 1.0)
    assert np.all(flat["model.visual.merger.linear_fc1.bias"] == 0.0)
    ids = np.asarray([codec.encode("user what colour is the shape ?")], np.int32)
    model = init_model(config, seed=1)
    logp = np.asarray(jnp.log(jnp.exp(model(ids)[0, -1]) / jnp.exp(model(ids)[0, -1]).sum()))
    entropy = -(np.exp(logp) * logp).sum()
    assert entropy > 0.95 * np.log(config.text.vocab_size)  # a near-uniform first policy


def test_credit_panel_shows_a_sample_that_kept_a_completion():
    """Row 0 cut to nothing (it sampled a vision placeholder first) must not leave the
    TOKEN CREDIT panel with an empty list when another sample has tokens."""
    from vlmrl.core.telemetry import credit_row

    mask = np.array([[False, False], [True, True], [True, False]])
    assert credit_row(np.zeros(3), mask) == 1  # no signal anywhere: the first kept completion
    assert credit_row(np.array([0.5, 0.0, -0.5]), mask) == 2  # signal, and tokens to show
    assert credit_row(np.array([0.5, 0.0, 0.0]), mask) == 1
    assert credit_row(np.zeros(2), np.zeros((2, 3), bool)) == 0  # nothing kept anywhere
