"""A real tiny training run from a checkpoint directory shaped like Qwen3-VL's drives the
dashboard in a pseudo-terminal; every panel is checked against what the run did.

The checkpoint has a byte-level BPE with Qwen's special tokens, a chat template, a
preprocessor config and DeepStack taps on vision blocks 1 and 2. The run trains in
bfloat16 (the default for --model_dir) with --tui and --record; the screen is read
through pyte and compared with the recorded log, the checkpoint's own config, and
transformers' tokenizer (the oracle for token text)."""
import json
import os
import sys

import pytest

pytestmark = pytest.mark.slow


def _events(path):
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line still being written
    return out


def test_real_training_run_drives_every_panel_truthfully(tmp_path, qwen_like_checkpoint, run_in_pty):
    import jax.numpy as jnp
    import transformers

    from vlmrl.envs.shapes import make_env
    from vlmrl.models.qwen3vl import KVCache
    from vlmrl.models.qwen3vl.load import read_config
    from vlmrl.utils.tui.panels.common import fmt_bytes_pair

    env = make_env("colors")
    ckpt = qwen_like_checkpoint(str(tmp_path / "ckpt"), [env.question, *env.answers])
    log = tmp_path / "run.jsonl"
    t = run_in_pty([sys.executable, "-m", "vlmrl.core.train", "--model_dir", ckpt, "--env", "colors",
                    "--steps", "500", "--batch", "2", "--group", "2", "--tui", "--record", str(log),
                    "--no_compile_cache"], W=140, H=45)
    assert t.wait_for("reward +", timeout=900), t.text()  # the first update landed
    assert t.wait_for("STEP", timeout=60), t.text()
    screen = t.text()
    events = _events(log)
    info = next(e for e in events if e["kind"] == "run_info")
    decodes = [e for e in events if e["kind"] == "decode"]
    config = read_config(ckpt)
    L, H = config.text.num_hidden_layers, config.text.num_attention_heads

    # layers and heads: the heatmap's rows and the KV formula come from the model
    assert f"L0-{L - 1} of {L}" in screen and f"{H} heads" in screen
    kv, hd = config.text.num_key_value_heads, config.text.head_dim
    rows = 2 * 2
    assert f"2×{L}L×{kv}kv×{hd}d×bf16×b{rows}" in screen
    # dtype: what the arrays hold, bfloat16 by default for a checkpoint
    assert info["dtype"] == "bfloat16" and info["weights_dtype"] == "bfloat16"
    # KV bytes: the cache the sampler allocates, counted independently here
    cache = KVCache.init(config, rows, info["max_cache"], jnp.bfloat16)
    per_slot = (cache.k.nbytes + cache.v.nbytes) // info["max_cache"]
    assert decodes and all(e["kv_bytes"] == per_slot * e["cache_len"] for e in decodes)
    shown = {f"KV {fmt_bytes_pair(e['kv_bytes'], per_slot * e['cache_max'])}" for e in decodes if e["seq_index"] == 0}
    assert any(s in screen for s in shown), (shown, screen)
    # host memory, labelled as such on a CPU backend
    assert info["memory_source"] == "host" and " host " in screen and info["device_kind"] == "cpu"
    # DeepStack: the LLM layers fed (vision blocks 1 and 2 feed layers 0 and 1)
    assert config.vision.deepstack_visual_indexes == (1, 2) and "DeepStack → L0 L1" in screen
    assert "DeepStack → L1 L2" not in screen
    # token text as the tokenizer's decoder means it: never a raw byte-level piece
    hf = transformers.AutoTokenizer.from_pretrained(ckpt)
    for e in decodes:
        ref = hf.decode([e["token_id"]])
        if "\ufffd" in ref:
            assert "‹" in e["token_text"] and "\ufffd" not in e["token_text"]
        else:
            assert e["token_text"] == ref, e
    assert "Ġ" not in screen
    credit = next(e for e in events if e["kind"] == "credit")
    assert all("Ġ" not in tok for tok in credit["tokens"])

    # the matrix view: filled from the prompt's prefill, labelled by the tokenizer
    t.send(b"m")
    assert t.wait_for("ATTENTION MATRIX", timeout=30), t.text()
    t.pump(1.0)
    view = t.text()
    assert "no attention matrix yet" not in view
    mat = next(e for e in events if e["kind"] == "attention_matrix")
    assert mat["layer"] is None and mat["head"] is None  # mean over layers and heads by default
    assert " colour" in mat["query_tokens"] and "<|image_pad|>" in mat["query_tokens"]
    assert "colour" in view and "vision" in " ".join(mat["token_types"])
    # chat markers are the tokenizer's special tokens, typed so in the matrix
    kinds = dict(zip(mat["key_tokens"], mat["token_types"]))
    assert kinds["<|im_start|>"] == kinds["<|im_end|>"] == "special", kinds
    # the explorer labels the prompt with the tokenizer's text, not placeholders
    t.send(b"e")
    assert t.wait_for("TOKEN ATTENTION EXPLORER", timeout=30), t.text()
    t.pump(1.0)
    view = t.text()
    assert "colour" in view and "helpful" in view and "in1" not in view
    t.send(b"q")


@pytest.mark.parametrize("field, bump", [("image_token_id", 1), ("vision_start_token_id", 2)])
def test_a_tokenizer_that_disagrees_with_config_is_one_line_exit_2(tmp_path, qwen_like_checkpoint, field, bump):
    import subprocess

    from vlmrl.envs.shapes import make_env

    env = make_env("colors")
    ckpt = qwen_like_checkpoint(str(tmp_path / "ckpt"), [env.question, *env.answers])
    cfg_path = os.path.join(ckpt, "config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    good = cfg[field]
    cfg[field] = good + bump
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh)
    out = subprocess.run([sys.executable, "-m", "vlmrl.core.train", "--model_dir", ckpt, "--steps", "1",
                          "--no_compile_cache"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert f"id {good}" in lines[0] and f"{field} is {good + bump}" in lines[0]
