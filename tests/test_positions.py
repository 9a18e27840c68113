"""mRoPE position ids / rope deltas against HF 5.x `Qwen3VLModel.get_rope_index`."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vlmrl.models.qwen3vl.config import Qwen3VLConfig  # noqa: E402
from vlmrl.models.qwen3vl.positions import (  # noqa: E402
    decode_position_ids, get_rope_index, image_token_mask, mm_token_type_ids)

CFG = Qwen3VLConfig.tiny()
VS, VE, IMG, PAD = CFG.vision_start_token_id, CFG.vision_end_token_id, CFG.image_token_id, 151643


@pytest.fixture(scope="module")
def hf_model():
    from transformers import Qwen3VLConfig as HFConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    raw = CFG.to_hf_dict()
    raw["text_config"]["num_hidden_layers"] = 1
    raw["vision_config"]["depth"] = 1
    raw["vision_config"]["deepstack_visual_indexes"] = []
    return Qwen3VLModel(HFConfig(**raw)).eval()


def _hf_rope(model, ids, grids, mask):
    with torch.no_grad():
        pos, delta = model.get_rope_index(
            torch.tensor(ids), torch.tensor(mm_token_type_ids(ids, CFG)),
            image_grid_thw=None if grids is None else torch.tensor(grids),
            attention_mask=None if mask is None else torch.tensor(mask))
    return pos.numpy(), delta.numpy().reshape(-1)


def _image(grid):
    return [VS] + [IMG] * (grid[0] * grid[1] * grid[2] // 4) + [VE]


def _left_pad(rows):
    s = max(len(r) for r in rows)
    ids = np.array([[PAD] * (s - len(r)) + r for r in rows])
    mask = np.array([[0] * (s - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _check(model, ids, grids, mask):
    pos, delta = get_rope_index(ids, grids, mask, CFG)
    ref_pos, ref_delta = _hf_rope(model, ids, grids, mask)
    assert pos.dtype == np.int32 and pos.shape == (3,) + ids.shape and delta.shape == (ids.shape[0],)
    real = np.ones(ids.shape, bool) if mask is None else mask.astype(bool)
    np.testing.assert_array_equal(pos[:, real], ref_pos[:, real])
    # HF's delta is against each row's unpadded length; ours against the padded length S,
    # so that decode position = cache_length + delta for every row.
    pads = ids.shape[1] - real.sum(1)
    np.testing.assert_array_equal(delta, ref_delta - pads)
    return pos, delta


def test_text_only_matches_hf(hf_model):
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    pos, delta = _check(hf_model, ids, None, None)
    assert (pos == np.arange(6)).all() and delta.tolist() == [0]


def test_one_image_matches_hf_and_the_worked_example(hf_model):
    ids = np.array([[10, 11, 12] + _image((1, 4, 6)) + [13, 14, 15, 16]])
    pos, delta = _check(hf_model, ids, np.array([[1, 4, 6]]), None)
    # docs/qwen3vl.md §4.1: T 0 1 2 3 | 4×6 | 7..10 ; H 4 4 4 5 5 5 ; W 4 5 6 4 5 6 ; delta 11 - 14.
    assert pos[0, 0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 7, 8, 9, 10, 11]
    assert pos[1, 0, 4:10].tolist() == [4, 4, 4, 5, 5, 5] and pos[2, 0, 4:10].tolist() == [4, 5, 6, 4, 5, 6]
    assert delta.tolist() == [12 - 15]


def test_two_images_in_one_prompt_match_hf(hf_model):
    grids = np.array([[1, 4, 6], [1, 6, 2]])
    ids = np.array([[20, 21] + _image((1, 4, 6)) + [22] + _image((1, 6, 2)) + [23, 24, 25]])
    _check(hf_model, ids, grids, None)


def test_left_padded_batch_with_images_across_rows_matches_hf(hf_model):
    grids = np.array([[1, 2, 4], [1, 6, 2], [1, 4, 4]])
    rows = [[30] + _image((1, 2, 4)) + [31, 32],
            [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52],            # text only
            [60] + _image((1, 6, 2)) + _image((1, 4, 4)) + [61]]
    ids, mask = _left_pad(rows)
    pos, delta = _check(hf_model, ids, grids, mask)
    # The text row: cumsum(mask) - 1 over its real tokens.
    np.testing.assert_array_equal(pos[:, 1][:, mask[1] == 1], np.tile(np.arange(13), (3, 1)))
    # Decode continues each row at max real position + 1 from the shared cache length S.
    nxt = decode_position_ids(ids.shape[1], delta)
    for r in range(3):
        assert nxt[:, r, 0].tolist() == [int(pos[:, r][:, mask[r] == 1].max()) + 1] * 3


def test_masks_and_token_types():
    ids = np.array([[1, VS, IMG, IMG, VE, CFG.video_token_id]])
    assert image_token_mask(ids, CFG).tolist() == [[False, False, True, True, False, False]]
    assert mm_token_type_ids(ids, CFG).tolist() == [[0, 0, 1, 1, 0, 2]]


def test_image_count_mismatch_is_a_clear_error():
    ids = np.array([[1] + _image((1, 4, 6)) + [2]])
    with pytest.raises(ValueError, match="needs 8 <\\|image_pad\\|> tokens but batch row 0 has a run of only 6"):
        get_rope_index(ids, np.array([[1, 4, 8]]), None, CFG)
    with pytest.raises(ValueError, match="2 images"):
        get_rope_index(ids, np.array([[1, 4, 6], [1, 2, 2]]), None, CFG)
    with pytest.raises(ValueError, match="more <\\|image_pad\\|> tokens"):
        get_rope_index(ids, None, None, CFG)
