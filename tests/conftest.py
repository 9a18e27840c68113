"""What the tests share: the CPU setup, a Qwen3-VL-shaped tiny checkpoint, a process on a
pty, a dashboard scenario, terminal-screen readers and model references. Test modules
import shared helpers from here and nowhere else (`from conftest import scenario`), never
from another test module. Helper modules stand behind this file and are imported only
here: `hf_oracle.py` (tiny random Hugging Face checkpoints, the reference for parity
tests, with its session fixtures `hf_factory` and `hf_tiny`), `fake_qwen.py` (a tiny
stand-in model for sampler and tap tests), `analyze_oracle.py` (the report's numbers
computed directly from a log), `rl_views_checks.py` (the RL views' screens checked
against a log) and `subprocess_checks.py` (a child under a memory cap, one-line failures).

The environment below is set before anything imports JAX.
"""
from __future__ import annotations

import os

# Tests run on the CPU with a deterministic, full-precision setup; a GPU runner must not
# change numerics under the parity tests.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import dataclasses  # noqa: E402
import fcntl  # noqa: E402
import json  # noqa: E402
import pty  # noqa: E402
import select  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import termios  # noqa: E402
import time  # noqa: E402
import unicodedata  # noqa: E402

import numpy as np  # noqa: E402
import pyte  # noqa: E402
import pytest  # noqa: E402

from analyze_oracle import oracle  # noqa: E402,F401
from fake_qwen import FakeCache, FakeQwen, fake_sampler_kwargs, tiny_fake  # noqa: E402,F401
from hf_oracle import (  # noqa: E402,F401  (fixtures: hf_factory, hf_tiny)
    _hf_inputs, build_tiny_checkpoint, hf_factory, hf_forward, hf_generate, hf_tiny, left_pad, load_reference,
    make_prompt)
from subprocess_checks import one_line_exit_2, run_limited  # noqa: E402,F401
from rl_views_checks import (  # noqa: E402,F401  (its SIZES are the three sizes defined below)
    T, check_charts_show_logged_values, check_group_view, last_group, logged_scalars, on_terminal, raw_lines, store_of)
from vlmrl.instrument.events import CreditState, DecodeState, RunInfo, TrainingState  # noqa: E402
from vlmrl.utils.tui import layout  # noqa: E402
from vlmrl.utils.tui.canvas import char_width  # noqa: E402
from vlmrl.utils.tui.palette import COLOR  # noqa: E402
from vlmrl.utils.tui.store import Store  # noqa: E402
from vlmrl.utils.tui.view import ViewState  # noqa: E402


# ---- checkpoints and processes -----------------------------------------------------------

# A Qwen3-VL-style chat template (system turn, content lists with image parts, namespace
# counter, whitespace control): the renderer's jinja settings all matter for it.
QWEN_LIKE_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if loop.first and message.role != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{%- endif %}"
    "<|im_start|>{{ message.role }}\n"
    "{%- if message.content is string %}{{ message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content %}{%- set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'text' %}{{ content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}<|im_end|>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def write_qwen_like_checkpoint(path, words, *, seed=0, image_side=64, deepstack=(1, 2), vision_depth=3,
                               corpus_extra=()):
    """A checkpoint directory shaped like a real Qwen3-VL one, tiny and random: byte-level BPE
    tokenizer.json with Qwen's special tokens as added tokens, tokenizer_config.json with a
    chat template, preprocessor_config.json, config.json whose DeepStack taps vision blocks
    `deepstack`, and safetensors weights. Returns the directory (str)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from vlmrl.core.rollout import init_model
    from vlmrl.models.qwen3vl.config import Qwen3VLConfig
    from vlmrl.models.qwen3vl.load import save_hf_checkpoint

    os.makedirs(path, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(words), "You are a helpful assistant.", "system user assistant", *corpus_extra] * 10
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens(list(QWEN_SPECIALS))
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as fh:
        json.dump({"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "chat_template": QWEN_LIKE_TEMPLATE}, fh)
    side2 = image_side * image_side
    with open(os.path.join(path, "preprocessor_config.json"), "w") as fh:
        json.dump({"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3,
                   "image_std": [0.5] * 3, "size": {"shortest_edge": side2, "longest_edge": side2}}, fh)
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIALS}
    base = Qwen3VLConfig.tiny(vocab_size=tok.get_vocab_size(with_added_tokens=True))
    text = dataclasses.replace(base.text, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    vision = dataclasses.replace(base.vision, depth=vision_depth, deepstack_visual_indexes=tuple(deepstack))
    config = dataclasses.replace(base, text=text, vision=vision, image_token_id=ids["<|image_pad|>"],
                                 video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                                 vision_end_token_id=ids["<|vision_end|>"], name="qwen-like-tiny")
    save_hf_checkpoint(init_model(config, seed), path)
    return str(path)


@pytest.fixture
def qwen_like_checkpoint():
    """Factory: write_qwen_like_checkpoint(path, words, **kw) -> the checkpoint directory."""
    return write_qwen_like_checkpoint


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Pty:
    """A child process on a pty of W x H whose output is fed to a pyte screen."""

    def __init__(self, args, W=120, H=40, env=None):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", H, W, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(W), LINES=str(H), **(env or {}))
        env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.screen = pyte.Screen(W, H)
        self.stream = pyte.ByteStream(self.screen)

    def pump(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            r, _, _ = select.select([self.master], [], [], 0.05)
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    return
                if not data:
                    return
                self.stream.feed(data)

    def wait_for(self, text, timeout=30.0):
        end = time.time() + timeout
        while time.time() < end:
            self.pump(0.1)
            if text in self.text():
                return True
        return False

    def send(self, data: bytes):
        os.write(self.master, data)

    def text(self):
        return "\n".join(self.screen.display)

    def close(self):
        if self.master is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)
        self.master = None


@pytest.fixture
def kv_caches(monkeypatch):
    """Every KVCache a sampler allocates while the test runs (the arrays a planner must match)."""
    from vlmrl.models.qwen3vl.cache import KVCache

    seen = []
    init = KVCache.init.__func__

    def spy(cls, config, batch, max_len, *args, **kwargs):
        cache = init(cls, config, batch, max_len, *args, **kwargs)
        seen.append(cache)
        return cache

    monkeypatch.setattr(KVCache, "init", classmethod(spy))
    return seen


@pytest.fixture
def run_in_pty():
    """Factory: run_in_pty(argv, W=120, H=40, env=None) -> a Pty (closed after the test)."""
    made = []

    def start(args, **kw):
        made.append(Pty(args, **kw))
        return made[-1]

    yield start
    for t in made:
        t.close()


# ---- a dashboard scenario: the screens the panel tests read -----------------------------

L, H = 28, 16
SIZES = [(80, 24), (120, 40), (200, 60)]
T0 = 100.0  # store clock when the last event arrives


class Clock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def run_info(**kw) -> RunInfo:
    base = dict(model_name="qwen3vl-2b", num_layers=L, num_heads=H, num_kv_heads=8, head_dim=128,
                dtype="bfloat16", max_cache=2048, batch=2, deepstack_layers=(0, 1, 2),
                device_memory_in_use=3 << 30, device_memory_limit=16 << 30, wall_time=1.0)
    base.update(kw)
    return RunInfo(**base)


def stats_for(step: int) -> dict:
    """Deterministic per-layer/head stats; layer l head h of `focus` = ((l*16+h) % 20)/20."""
    grid = (np.arange(L)[:, None] * H + np.arange(H)[None, :]).astype(np.float32)
    focus = (grid % 20) / 20.0
    return {"focus": focus, "max": np.full((L, H), 0.9, np.float32),
            "vision": np.tile(np.linspace(0, 1, L, dtype=np.float32)[:, None], (1, H)),
            "sink": np.full((L, H), 0.1, np.float32)}


def decode_event(step: int, text: str = "tok", seq: int = 0, **kw) -> DecodeState:
    base = dict(step=step, token_id=4000 + step, token_text=text, token_prob=0.875, cache_len=100 + step,
                cache_max=2048, active_layer=27, active_head=3, mrope_t=60 + step, mrope_h=60 + step,
                mrope_w=60 + step, seq_index=seq, batch_size=2, entropy=1.5,
                top_k=[(4000 + step, text, 0.875), (7, " maybe", 0.05)], attn_stats=stats_for(step),
                vision_span=(13, 77), vision_grid=(1, 16, 16), phase="decode", wall_time=1000.0 + step)
    base.update(kw)
    return DecodeState(**base)


def scenario(clock: Clock = None, steps: int = 12):
    clock = clock or Clock(T0 - steps * 0.05)
    store = Store(clock=clock, started_at=0.0)
    store.apply(run_info())
    for s in range(1, steps + 1):
        clock.t += 0.05
        store.apply(decode_event(s, text=f" w{s}"))
    store.apply(TrainingState(step=7, reward_mean=0.5312, reward_std=0.1204, kl=0.0123, loss=0.3101,
                              tokens_per_sec=1234.4, policy_entropy=1.234, clip_fraction=0.05))
    store.apply(CreditState(tokens=[" a", " big", " cat", " sat"], credits=[0.25, -1.5, 0.75, -0.1], step=7))
    return store


META = {"dropped": 3, "fps": 20.0}


def screen_text(store, view=ViewState(), size=(120, 40), now=T0 + 0.5, theme=COLOR, meta=META) -> str:
    c = layout.render_screen(store.snapshot(), view, size[0], size[1], now, theme, meta=meta)
    return c.text()


def row_cells(chars) -> int:
    """Columns a canvas row occupies on a terminal ("" is the right half of a wide char)."""
    return sum(0 if ch == "" else char_width(ch[0]) for ch in chars)


EXPECTED = {
    "header": ["VLMRL qwen3vl-2b", "step 7", "reward +0.531±0.120", "KL 0.0123", "loss 0.3101", "tok/s 1234",
               "entropy 1.234", "clip 0.050", "dropped 3", "fps 20.0", "up 0:01:40"],
    "decode": ["DECODE LIVE", "Cache: 112/2048", '" w12"', "id 4012", "p 0.875", "alts"],
    "flow": ["COMPUTATION FLOW", "mRoPE 72", "STEP 12"],
    "attention": ["ATTENTION FLOW · focus", "L27 "],
    "vision": ["VISION INJECTION @ Token[13]", "patch grid 1×16×16", "merged grid 1×8×8", "DeepStack → L0 L1 L2", "share/layer"],
    "mrope": ["mRoPE", "T 72 H 72 W 72"],
    "credit": ["TOKEN CREDIT", '" big"', "-1.500", "+0.750"],
    # 2 (K,V) * 28 layers * 8 kv heads * 128 dim * 2 bytes * batch 2 = 229376 B per token
    "kv": ["KV CACHE MEMORY", f"KV {229376 * 112 / 2**20:.1f}/{229376 * 2048 / 2**20:.1f} MiB", "pages 7/128",
           "3.0/16.0 GiB", "112/2048"],
    "footer": ["dashboard", "dropped 3"],
}


# ---- reading a terminal emulator's screen ----------------------------------------------

def cells(screen: pyte.Screen):
    """Everything visible per cell: text and the attributes the encoder sets."""
    return [[(c.data, c.fg, c.bg, c.bold, c.reverse, c.underscore)
             for c in (screen.buffer[y][x] for x in range(screen.columns))]
            for y in range(screen.lines)]


def base_text(rows):
    """Rows without combining marks: emulators differ on where a mark after a wide char
    goes (pyte puts it on the wide char's empty right half and then never shows it)."""
    return ["".join(ch for ch in unicodedata.normalize("NFD", r) if not unicodedata.combining(ch)) for r in rows]


# ---- the real model, driven as a reference ----------------------------------------------

def greedy_generate(model, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None, *,
                    max_new_tokens: int = 32, cache_dtype=None):
    """Greedy continuation with the KV cache, a plain Python loop over the jitted decode
    step (the reference the sampler's scanned loop is compared with).

    Returns (tokens int32 [B, max_new_tokens], logits float32 [B, max_new_tokens, V]) where
    logits[:, k] chose tokens[:, k]. No early stopping.
    """
    import jax.numpy as jnp
    from flax import nnx

    from vlmrl.models.qwen3vl.cache import KVCache
    from vlmrl.models.qwen3vl.model import decode_fn, prefill_fn

    ids, mask, pos, pv, vin = model.prepare_inputs(input_ids, pixel_values, image_grid_thw, attention_mask)
    B, S = ids.shape
    cache = KVCache.init(model.config, B, S + max_new_tokens, cache_dtype or model.dtype)
    graphdef, state = nnx.split(model)
    logits, cache, _ = prefill_fn(graphdef, state, ids, mask, pos, pv, vin, cache)
    step_logits = [logits[:, -1]]  # left padding: the last column is real in every row
    tokens = [jnp.argmax(step_logits[0], axis=-1).astype(jnp.int32)]
    for _ in range(max_new_tokens - 1):
        lg, cache, _ = decode_fn(graphdef, state, tokens[-1], cache)
        step_logits.append(lg)
        tokens.append(jnp.argmax(lg, axis=-1).astype(jnp.int32))
    return (np.asarray(jnp.stack(tokens, axis=1)),
            np.asarray(jnp.stack(step_logits, axis=1).astype(jnp.float32)))


def tree_equal(a, b) -> bool:
    """Exact equality of two pytrees of arrays."""
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def load_hf_tensors(module, tensors, prefix: str = "") -> set:
    """Copy Hugging Face arrays (name -> array) into `module` (a whole model or one tower)
    by the mapping `load_hf_checkpoint` uses; returns the names used. Every missing tensor
    and shape mismatch is collected and raised together before anything is written."""
    import jax.numpy as jnp
    from flax import nnx

    from vlmrl.models.qwen3vl.load import mapping_table, to_nnx

    params = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
    plan, problems = [], []
    for name, (path, shape, transform) in mapping_table(module).items():
        full = prefix + name
        if full not in tensors:
            problems.append(f"missing tensor {full}")
            continue
        arr = to_nnx(np.asarray(tensors[full]), transform)
        if tuple(arr.shape) != tuple(shape):
            problems.append(f"{full}: checkpoint shape {tuple(np.shape(tensors[full]))} maps to "
                            f"{tuple(arr.shape)}, the module expects {tuple(shape)}")
            continue
        plan.append((params[path], arr, full))
    if problems:
        raise ValueError("tensors do not fit the module:\n  " + "\n  ".join(problems))
    for var, arr, _ in plan:
        var.set_value(jnp.asarray(arr, dtype=var.get_value().dtype))
    return {full for _, _, full in plan}


def count_prim(jaxpr, names=None) -> int:
    """Equations of the host-callback primitives (the taps' own `tap_callback`, or
    `debug_callback` where JAX internals are unavailable) in a (closed) jaxpr, sub-jaxprs
    (cond, while, pjit) included."""
    from jax.extend import core as jcore

    from vlmrl.instrument.tap_callback import CALLBACK_PRIMITIVES

    names = CALLBACK_PRIMITIVES if names is None else names
    n = 0
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        n += eqn.primitive.name in names or "callback" in eqn.primitive.name
        for sub in jcore.jaxprs_in_params(eqn.params):
            n += count_prim(sub, names)
    return n

