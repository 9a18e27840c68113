"""Environments: deterministic examples, exact rewards, processor-layout patches, tokenizer."""
import numpy as np
import pytest

from vlmrl.core.rollout import load_codec, make_batch
from vlmrl.envs.base import answer_reward, rewards_for
from vlmrl.envs.shapes import COLORS, ColorsEnv, CountEnv, make_env
from vlmrl.envs.tokenizer import QWEN_SPECIAL_TOKENS, build_tokenizer, write_tokenizer_dir
from vlmrl.models.qwen3vl.processor import build_prompt, preprocess_images


def test_examples_are_a_pure_function_of_seed_and_index():
    env = ColorsEnv()
    a = env.examples(seed=3, start=10, n=4)
    b = env.examples(seed=3, start=12, n=2)  # overlapping window, drawn on its own
    for x, y in zip(a[2:], b):
        assert np.array_equal(x.image, y.image) and x.answer == y.answer
    c = env.examples(seed=4, start=10, n=4)
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_colors_image_shows_the_answer_colour():
    env = ColorsEnv()
    for ex in env.examples(seed=0, start=0, n=30):
        rgb = np.asarray(COLORS[ex.answer])
        close = np.all(np.abs(ex.image.astype(int) - rgb) <= 2, axis=-1)
        assert close.sum() > 40, ex.answer  # the shape is really drawn in that colour
        assert ex.image.shape == (64, 64, 3) and ex.image.dtype == np.uint8
    answers = {ex.answer for ex in env.examples(seed=0, start=0, n=200)}
    assert answers == set(env.answers)  # every colour occurs


def test_count_env_draws_that_many_separate_shapes():
    env = CountEnv()
    for ex in env.examples(seed=1, start=0, n=20):
        k = ("one", "two", "three", "four").index(ex.answer) + 1
        bright = ex.image.max(axis=-1) > 90  # background is dark grey (<= 68)
        cells = [bright[:32, :32], bright[:32, 32:], bright[32:, :32], bright[32:, 32:]]
        assert sum(c.any() for c in cells) == k
        assert ex.aliases == (str(k),)


def test_rewards_are_exact_answer_words():
    ex = ColorsEnv().examples(0, 0, 1)[0]
    other = next(c for c in COLORS if c != ex.answer)
    assert answer_reward(ex.answer, ex) == 1.0
    assert answer_reward(f" {ex.answer.upper()}.", ex) == 1.0
    assert answer_reward(f"{ex.answer} it is", ex) == 0.5  # right, but did not stop
    assert answer_reward(f"{other} {ex.answer}", ex) == 0.0
    assert answer_reward("", ex) == 0.0
    assert answer_reward(f"{ex.answer}dish", ex) == 0.0
    count = CountEnv().examples(0, 0, 1)[0]
    assert answer_reward(count.aliases[0], count) == 1.0
    with pytest.raises(ValueError, match="2 completions for 1 examples"):
        rewards_for(ColorsEnv(), ["a", "b"], [ex])


def test_tokenizer_round_trips_through_tokenizer_json(tmp_path):
    write_tokenizer_dir(str(tmp_path), ColorsEnv().answers)
    codec = load_codec(str(tmp_path))
    for s in QWEN_SPECIAL_TOKENS:
        assert codec.encode(s) == [codec.token_id(s)]
    text = build_prompt("what colour is the shape ?", [[1, 4, 4]])
    ids = codec.encode(text)
    assert ids.count(codec.token_id("<|image_pad|>")) == 4
    assert codec.decode(ids, skip_special_tokens=True) == "user what colour is the shape ? assistant"
    assert codec.encode("red blue") == [codec.token_id("red"), codec.token_id("blue")]
    assert codec.encode("zebra") == [codec.token_id("[UNK]")]
    assert codec.vocab_size == build_tokenizer(ColorsEnv().answers).get_vocab_size(with_added_tokens=True)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_codec(str(tmp_path / "nowhere"))


def test_make_batch_uses_the_processor_without_resizing(tmp_path):
    env = make_env("count")
    codec = load_codec(write_tokenizer_dir(str(tmp_path), env.answers))
    batch = make_batch(env, codec, seed=0, start=0, n=3)
    assert batch.pixel_values.shape == (3 * 16, 1536) and batch.image_grid_thw.tolist() == [[1, 4, 4]] * 3
    pad = codec.token_id("<|image_pad|>")
    assert all(int((p == pad).sum()) == 4 for p in batch.prompt_ids)  # 4x4 patches / merge 2x2
    # exactly the pixels of the drawn image (a resize would blur the shapes' edges)
    own, _ = preprocess_images([batch.examples[1].image], min_pixels=64 * 64, max_pixels=64 * 64)
    assert np.array_equal(batch.pixel_values[16:32], own)
    img = batch.examples[1].image
    assert np.isclose(own.reshape(16, 3, 2, 16, 16)[0, 0, 0, 0, 0], img[0, 0, 0] / 255 * 2 - 1, atol=1e-6)
    rep = batch.repeat(2)
    assert len(rep) == 6 and np.array_equal(rep.pixel_values[16:32], batch.pixel_values[:16])
    assert [e.answer for e in rep.examples][::2] == [e.answer for e in batch.examples]
    with pytest.raises(ValueError, match="unknown env 'nope'"):
        make_env("nope")


def test_special_tokens_before_the_answer_earn_no_reward(tmp_path):
    """Regression: scoring text with every special token skipped paid full reward for
    "<|box_start|> red", and PPO learned to emit exactly that."""
    from vlmrl.core.rollout import completion_texts

    write_tokenizer_dir(str(tmp_path), ColorsEnv().answers)
    codec = load_codec(str(tmp_path))
    end = codec.token_id("<|im_end|>")
    toks = np.asarray([[codec.token_id("<|box_start|>"), codec.token_id("red")],
                       [codec.token_id("red"), end]])
    texts = completion_texts(toks, np.ones_like(toks, bool), codec, [end])
    ex = ColorsEnv().examples(0, 0, 1)[0]
    ex = type(ex)(ex.image, ex.question, "red")
    assert [answer_reward(t, ex) for t in texts] == [0.0, 1.0]
