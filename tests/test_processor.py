"""Image preprocessing parity with HF's Qwen2VLImageProcessorPil (Qwen3-VL values), prompts, tokenizer."""
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from vlmrl.models.qwen3vl.processor import (
    IMAGE_PAD, ImageProcessorConfig, build_prompt, expand_image_pads, left_pad, load_tokenizer, num_image_tokens,
    preprocess_images, render_chat, smart_resize)

pytest.importorskip("transformers")


def _hf_processor(min_pixels=65536, max_pixels=16777216):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
                                    image_std=[0.5] * 3, min_pixels=min_pixels, max_pixels=max_pixels)


def _image(h, w, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: bicubic resampling of pure noise would hide nothing, but
    # real structure makes a wrong resize or patch order show up strongly.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(yy * 255 // max(h - 1, 1)), (xx * 255 // max(w - 1, 1)), (yy + xx) % 256], -1)
    arr = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        img = img.copy()
        img.putalpha(alpha)
    elif mode != "RGB":
        img = img.convert(mode)
    return img


def _compare(images, **kw):
    pv, grid = preprocess_images(images, **kw)
    ref = _hf_processor(**kw)(images=images, return_tensors="np")
    assert pv.dtype == np.float32 and pv.shape[1] == 1536
    np.testing.assert_array_equal(grid, ref["image_grid_thw"])
    assert pv.shape == ref["pixel_values"].shape
    assert float(np.abs(pv - ref["pixel_values"]).max()) <= 1e-5
    return pv, grid


@pytest.mark.parametrize("hw", [(480, 640), (256, 256), (100, 100), (300, 37), (37, 300), (333, 517), (801, 613)])
def test_pixels_and_grid_match_hf(hw):
    _, grid = _compare([_image(*hw, seed=hw[0])])
    h, w = smart_resize(*hw, factor=32, min_pixels=65536, max_pixels=16777216)
    assert grid.tolist() == [[1, h // 16, w // 16]]


def test_several_images_and_modes_in_one_call_match_hf():
    images = [_image(64, 96, 1), _image(120, 50, 2, mode="RGBA"), _image(90, 90, 3, mode="L"),
              _image(70, 130, 4, mode="P")]
    _, grid = _compare(images)
    assert grid.shape == (4, 3)


@pytest.mark.parametrize("hw", [(28, 40), (64, 64), (17, 95), (200, 150)])
def test_small_pixel_budgets_match_hf(hw):
    # The RL task uses small images: min_pixels far below Qwen3-VL's 65536.
    pv, grid = _compare([_image(*hw, seed=7)], min_pixels=32 * 32, max_pixels=128 * 128)
    assert 32 * 32 <= grid[0, 1] * grid[0, 2] * 256 <= 128 * 128
    assert pv.shape[0] == grid[0, 1] * grid[0, 2]


def test_max_pixels_caps_large_images_like_hf():
    _compare([_image(700, 1300, 5)], max_pixels=256 * 256)


def test_patch_rows_are_in_merge_window_order():
    # No resize needed (64x64, multiple of 32): row r of the output must be patch
    # (block_row, block_col, in_row, in_col), identical over both temporal slices.
    img = _image(64, 64, 9)
    pv, grid = preprocess_images(img, min_pixels=64 * 64)
    assert grid.tolist() == [[1, 4, 4]]
    x = (np.asarray(img, np.float32) / 255 - 0.5) / 0.5
    row = pv[1 * 4 + 3].reshape(3, 2, 16, 16)  # block (0,1), in (1,1) -> patch row 1, col 3
    np.testing.assert_allclose(row[:, 0], x[16:32, 48:64].transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_array_equal(row[:, 0], row[:, 1])


def test_smart_resize_examples():
    f = dict(factor=32, min_pixels=65536, max_pixels=16777216)
    assert smart_resize(480, 640, **f) == (480, 640)
    assert smart_resize(100, 100, **f) == (256, 256)
    assert smart_resize(1080, 1920, **f) == (1088, 1920)
    assert smart_resize(5000, 300, **f) == (4992, 288)
    assert smart_resize(30, 3000, **f) == (32, 3008)


def test_bad_images_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="image 1: aspect ratio"):
        preprocess_images([_image(32, 32), _image(10, 2100)])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        preprocess_images(str(tmp_path / "nope.png"))
    with pytest.raises(ValueError, match="mode 'I;16'"):
        preprocess_images(Image.new("I;16", (40, 40)))
    with pytest.raises(ValueError, match="dtype float32"):
        preprocess_images(np.zeros((40, 40, 3), np.float32))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        preprocess_images(str(tmp_path / "junk.png"))


def test_image_file_path_and_config_dir(tmp_path):
    img = _image(50, 80, 11)
    img.save(tmp_path / "a.png")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3, "size": {"shortest_edge": 4096, "longest_edge": 65536}}))
    cfg = ImageProcessorConfig.from_pretrained(str(tmp_path))
    assert (cfg.min_pixels, cfg.max_pixels) == (4096, 65536)
    assert ImageProcessorConfig.from_pretrained(str(tmp_path), min_pixels=1024).min_pixels == 1024
    pv, grid = preprocess_images(str(tmp_path / "a.png"), cfg)
    ref_pv, ref_grid = preprocess_images(img, min_pixels=4096, max_pixels=65536)
    np.testing.assert_array_equal(pv, ref_pv)
    np.testing.assert_array_equal(grid, ref_grid)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        ImageProcessorConfig.from_pretrained(str(tmp_path / "missing_dir"))


# ---- prompts and tokenizer ---------------------------------------------------------------------

def test_build_prompt_expands_one_pad_per_merged_window():
    grids = np.array([[1, 4, 6], [1, 2, 2]])
    prompt = build_prompt("What is this?", grids)
    assert prompt.startswith("<|im_start|>user\n<|vision_start|>")
    assert prompt.endswith("What is this?<|im_end|>\n<|im_start|>assistant\n")
    first, second = prompt.split("<|vision_end|>")[:2]
    assert first.count(IMAGE_PAD) == 6 and second.count(IMAGE_PAD) == 1
    assert build_prompt("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat("x", 1, system="be brief").startswith("<|im_start|>system\nbe brief<|im_end|>\n")
    with pytest.raises(ValueError, match="2 <\\|image_pad\\|> placeholders but 1 images"):
        expand_image_pads(render_chat("x", 2), grids[:1])
    assert num_image_tokens([1, 30, 40]) == 300


def _write_tokenizer(path):
    """A tiny word-level tokenizer.json whose special tokens get ids unlike Qwen's."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "user", "assistant", "What", "is", "this", "?", "\n", " "]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(r"\s"), behavior="isolated")
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                            "<|image_pad|>"])
    tok.save(str(path / "tokenizer.json"))


def test_tokenizer_looks_up_special_ids_by_name(tmp_path):
    _write_tokenizer(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert tok.image_pad_id == 14 and tok.vision_start_id == 12 and tok.im_end_id == 11
    assert tok.stop_ids == (11, 9)
    ids = tok.encode(build_prompt("What is this ?", np.array([[1, 4, 4]])))
    assert ids.count(tok.image_pad_id) == 4
    assert ids[:2] == [tok.token_id("<|im_start|>"), tok.token_id("user")]
    assert tok.decode([3, 4]) == "What is"
    assert tok.decode(ids, skip_special_tokens=True).count("What") == 1
    with pytest.raises(KeyError, match="<\\|video_pad\\|>"):
        tok.token_id("<|video_pad|>")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([10_000])


def test_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="not a usable tokenizer.json"):
        load_tokenizer(str(tmp_path))


def test_left_pad_aligns_the_last_tokens():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="empty"):
        left_pad([[1], []], 0)


def test_prompt_ids_and_pixels_match_hf_qwen3vl_processor(tmp_path, monkeypatch):
    """End to end against HF's Qwen3VLProcessor (pad expansion, token ids, pixels, token types)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin

    from vlmrl.models.qwen3vl.config import Qwen3VLConfig
    from vlmrl.models.qwen3vl.positions import mm_token_type_ids

    _write_tokenizer(tmp_path)
    # HF's video processor needs torchvision, which this project must not install; images
    # never touch it, so let the processor be built without one.
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    hf = Qwen3VLProcessor(image_processor=_hf_processor(min_pixels=1024, max_pixels=128 * 128),
                          tokenizer=PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json")),
                          video_processor=None)
    images = [_image(64, 96, 1), _image(40, 40, 2)]
    ref = hf(text=[render_chat("What is this ?", 2)], images=images, return_tensors="np")
    tok = load_tokenizer(str(tmp_path))
    pv, grid = preprocess_images(images, min_pixels=1024, max_pixels=128 * 128)
    ids = tok.encode(build_prompt("What is this ?", grid))
    assert ids == ref["input_ids"][0].tolist()
    np.testing.assert_array_equal(grid, ref["image_grid_thw"])
    assert float(np.abs(pv - ref["pixel_values"]).max()) <= 1e-5
    cfg = dataclasses.replace(Qwen3VLConfig.tiny(), image_token_id=tok.image_pad_id)
    np.testing.assert_array_equal(mm_token_type_ids(np.array([ids]), cfg), ref["mm_token_type_ids"])
