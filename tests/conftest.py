"""Shared test helpers: the CPU setup, a Qwen3-VL-shaped tiny checkpoint, a process on a pty.

None of these imports JAX: the environment below must be set before anything does."""
import dataclasses
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time

import pyte
import pytest

# Tests run on the CPU with a deterministic, full-precision setup; a GPU runner must not
# change numerics under the parity tests.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")


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
def run_in_pty():
    """Factory: run_in_pty(argv, W=120, H=40, env=None) -> a Pty (closed after the test)."""
    made = []

    def start(args, **kw):
        made.append(Pty(args, **kw))
        return made[-1]

    yield start
    for t in made:
        t.close()
