"""The checkpoint tokenizer: token text through the decoder, chat templates as transformers
renders them, special ids checked against config.json. The oracle is transformers itself,
on a tiny byte-level BPE saved here (Qwen's shape: ByteLevel pre-tokenizer and decoder,
Qwen's special tokens as added tokens)."""
import dataclasses
import json

import numpy as np
import pytest

from conftest import QWEN_LIKE_TEMPLATE
from vlmrl.models.qwen3vl.config import Qwen3VLConfig
from vlmrl.models.qwen3vl.processor import build_prompt
from vlmrl.models.qwen3vl.tokenizer import builtin_chat, load_tokenizer

transformers = pytest.importorskip("transformers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
CORPUS = ["What colour is the shape? red green blue", "How many shapes are there? two three four",
          "naïve café — 20 € über", "system user assistant You are a helpful assistant."] * 20

TEMPLATE = QWEN_LIKE_TEMPLATE  # shared with the end-to-end checkpoint writer


def _save(tmp_path, template=TEMPLATE, where="tokenizer_config.json", im_end_first=False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    specials = SPECIALS[::-1] if im_end_first else SPECIALS
    tok.add_special_tokens(specials)
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    if template is not None and where == "tokenizer_config.json":
        cfg["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    if template is not None and where == "chat_template.json":
        (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    return str(tmp_path)


def _hf(path):
    return transformers.AutoTokenizer.from_pretrained(path)


def test_token_text_is_what_the_decoder_means(tmp_path):
    d = _save(tmp_path)
    ours, hf = load_tokenizer(d), _hf(d)
    assert ours.byte_level
    red = ours.encode(" red", add_special_tokens=False)
    assert [ours.tokenizer.id_to_token(i) for i in red][0].startswith("Ġ")
    assert "".join(ours.token_text(i) for i in red) == " red"
    marks = 0
    for i in range(ours.vocab_size):
        text, ref = ours.token_text(i), hf.decode([i])
        assert "\ufffd" not in text
        if "\ufffd" in ref:  # a piece that ends (or starts) inside a UTF-8 character
            marks += 1
            assert "‹" in text and "›" in text
        else:
            assert text == ref, (i, text, ref)
    assert marks > 0  # the corpus' €, ï, é, ü, — do split across byte tokens
    euro = ours.encode("€", add_special_tokens=False)
    if len(euro) > 1:
        assert ours.token_text(euro[0]).startswith("‹e2›")


@pytest.mark.parametrize("where", ["tokenizer_config.json", "chat_template.json"])
@pytest.mark.parametrize("images", [0, 1, 2])
def test_chat_template_ids_equal_transformers(tmp_path, where, images):
    d = _save(tmp_path, where=where)
    ours, hf = load_tokenizer(d), _hf(d)
    assert ours.chat_template == TEMPLATE
    question = "What colour is the shape?"
    messages = [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": question}]}]
    # AutoTokenizer reads only tokenizer_config.json; chat_template.json is the processor's file
    extra = {"chat_template": TEMPLATE} if where == "chat_template.json" else {}
    ref = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, **extra)
    ref = list(ref["input_ids"] if hasattr(ref, "keys") else ref)
    got = ours.encode(ours.render_chat(question, images), add_special_tokens=False)
    assert got == ref
    # the processor expands each image's single pad to its merged patch count afterwards
    grid = np.array([[1, 4, 6]] * images, np.int64)
    prompt = build_prompt(question, grid, tokenizer=ours)
    assert prompt.count("<|image_pad|>") == 6 * images
    assert ours.render_chat(question, images) != builtin_chat(question, images)  # the template's own system turn


def test_no_template_falls_back_to_builtin(tmp_path):
    ours = load_tokenizer(_save(tmp_path, template=None))
    assert ours.chat_template is None
    assert ours.render_chat("hi", 1) == builtin_chat("hi", 1)


def test_broken_template_is_a_value_error(tmp_path):
    ours = load_tokenizer(_save(tmp_path, template="{% for x in %}"))
    with pytest.raises(ValueError, match="chat template"):
        ours.render_chat("hi", 0)
    ours = load_tokenizer(_save(tmp_path, template="{{ raise_exception('no images here') }}"))
    with pytest.raises(ValueError, match="no images here"):
        ours.render_chat("hi", 1)


def test_sandbox_blocks_attribute_escape(tmp_path):
    ours = load_tokenizer(_save(tmp_path, template="{{ messages.__class__.__mro__ }}"))
    with pytest.raises(ValueError):
        ours.render_chat("hi", 0)


def _config_for(tok):
    base = Qwen3VLConfig.tiny(vocab_size=tok.vocab_size)
    text = dataclasses.replace(base.text, bos_token_id=tok.token_id("<|endoftext|>"),
                               eos_token_id=tok.token_id("<|im_end|>"))
    return dataclasses.replace(base, text=text, image_token_id=tok.token_id("<|image_pad|>"),
                               video_token_id=tok.token_id("<|video_pad|>"),
                               vision_start_token_id=tok.token_id("<|vision_start|>"),
                               vision_end_token_id=tok.token_id("<|vision_end|>"))


def test_special_ids_checked_against_config(tmp_path):
    tok = load_tokenizer(_save(tmp_path))
    cfg = _config_for(tok)
    tok.check_special_ids(cfg)
    (tmp_path / "b").mkdir()
    other = load_tokenizer(_save(tmp_path / "b", im_end_first=True))
    with pytest.raises(ValueError) as err:
        other.check_special_ids(cfg)
    msg = str(err.value)
    assert "config.json" in msg and "id" in msg and "\n" not in msg
