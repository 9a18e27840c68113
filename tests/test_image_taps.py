"""The image view's taps: still one callback per emitted step with an image in the prompt
(and nothing at all when off), the watched row's images rebuilt from its own pixel rows,
images bounded on the host, and image events validated like every other."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import count_prim, make_prompt
from vlmrl.core.image_context import pool_cells, watched_images
from vlmrl.core.sampling import Sampler
from vlmrl.instrument.bus import Bus
from vlmrl.instrument.events import ImageAttention, ImageState, decode_event, encode_event
from vlmrl.instrument.image_tap import downsample, image_events
from vlmrl.instrument.limits import IMAGE_ATTN_BYTES, IMAGE_ATTN_TOKENS, IMAGE_MAX_H, IMAGE_MAX_W
from vlmrl.instrument.taps import TapConfig, decode_payload, image_slots, pack_payload
from vlmrl.models.qwen3vl.processor import preprocess_images, unpatchify

V = 152000


@pytest.fixture(scope="module")
def real_tiny():
    from vlmrl.models.qwen3vl import Qwen3VL, Qwen3VLConfig

    return nnx.eval_shape(lambda: Qwen3VL(Qwen3VLConfig.tiny(), rngs=nnx.Rngs(1)))  # traced only


def test_with_an_image_off_is_exactly_off_and_on_is_still_one_callback_per_emit(real_tiny):
    ids, pv, grid = make_prompt(V, [("text", 3), ("image", (1, 4, 6)), ("text", 4)], seed=1)
    kw = dict(prompts=[ids, ids[2:]], pixel_values=np.concatenate([pv, pv]), image_grid_thw=np.concatenate([grid, grid]),
              max_new_tokens=8)
    plain = Sampler(real_tiny).jaxpr(**kw)
    off = Sampler(real_tiny, tap=TapConfig(enabled=False)).jaxpr(**kw)
    on = Sampler(real_tiny, tap=TapConfig(enabled=True), bus=Bus()).jaxpr(**kw)
    assert count_prim(plain) == 0 and "callback" not in str(plain) and str(off) == str(plain)
    assert count_prim(on) == 2  # the image part rides in the prefill's and the gated decode's one callback
    no_image = Sampler(real_tiny, tap=TapConfig(enabled=True, image_attention=False), bus=Bus()).jaxpr(**kw)
    assert count_prim(no_image) == 2 and str(no_image) != str(on)


def test_at_the_2b_shape_the_largest_emit_stays_within_64_kb():
    """28 layers x 16 heads, 4 published rows of stats, a 151936-token vocabulary and a
    context of 8192: the image part of an emit is what IMAGE_ATTN_BYTES allows and the
    whole emit stays under 64 KB; a 448x448 image (196 tokens, 256 slots) costs 14.4 KB."""
    L, H, V, B = 28, 16, 151936, 8
    assert image_slots(196, L) == 196 and image_slots(16384, L) == 292 and image_slots(16384, 2) == 4096

    def nbytes(T, slots):
        aux = dict(attn_rows=(jnp.zeros((B, H, T)),) * L, key_valid=jnp.ones((B, T), bool),
                   key_vision=jnp.zeros((B, T), bool))
        z = jnp.zeros((B,))
        out = jax.eval_shape(lambda: pack_payload(decode_payload(
            TapConfig(enabled=True), aux, jnp.zeros((B, V)), 1.0, z.astype(jnp.int32), z, z, z.astype(bool), 3, 10,
            (slots, jnp.zeros(max(slots, 1), jnp.int32)) if slots else None)))
        return out.shape[0] * 4

    assert nbytes(256, 256) - nbytes(256, 0) == 4 * (L + L * 256 // 2) == 14448
    assert nbytes(8192, image_slots(16384, L)) <= 64 << 10


def test_the_watched_rows_images_come_from_its_own_pixel_rows():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (64, 96, 3)).astype(np.uint8), rng.integers(0, 256, (32, 64, 3)).astype(np.uint8),
            rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)]
    pv, grid = preprocess_images(imgs, min_pixels=32 * 32, max_pixels=96 * 96)
    img_id = 7
    row0 = [1] + [img_id] * 6 + [3]  # one image (grid 1x4x6 -> 6 tokens)
    row1 = [1] + [img_id] * 2 + [5, 6] + [img_id] * 4 + [2]  # two images (2 and 4 tokens)
    ids = np.zeros((2, 12), np.int64)
    ids[0, -len(row0):], ids[1, -len(row1):] = row0, row1
    tokens, images = watched_images(ids, grid, pv, img_id, 2, watch=1)
    assert tokens == 6 and [g for g, _ in images] == [(1, 1, 2), (1, 2, 2)]
    for (_, rgb), src in zip(images, imgs[1:]):
        assert np.array_equal(rgb, src)  # drawn at 32-multiples: no resize, exact round trip
    assert watched_images(ids, grid, pv, img_id, 2, watch=0)[0] == 6
    assert watched_images(ids, None, None, img_id, 2, watch=0) == (0, [])


def test_pool_cells_picks_the_smallest_factor_that_fits_and_numbers_cells_in_token_order():
    f, used, cells = pool_cells([(1, 2, 3)], slots=8, bound=8)
    assert (f, used) == (1, 6) and cells.tolist() == [0, 1, 2, 3, 4, 5, 8, 8]
    # 1x14x14 (196 tokens) into at most 64 cells: 2x2 pooling gives 7x7 = 49
    f, used, cells = pool_cells([(1, 14, 14)], slots=64, bound=200)
    assert (f, used) == (2, 49) and cells[:14].tolist() == [c // 2 for c in range(14)]
    assert cells[14] == 0 and cells[28] == 7 and cells[195] == 48 and (cells[196:] == 64).all()
    # two images, ceil at the edges: 1x3x3 -> 2x2 cells, 1x2x2 -> 1x1; the second starts after the first
    f, used, cells = pool_cells([(1, 3, 3), (1, 2, 2)], slots=5, bound=13)
    assert (f, used) == (2, 5) and cells.tolist() == [0, 0, 1, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4]


def test_images_are_downsampled_to_the_bound_with_their_aspect_and_never_enlarged():
    big = np.full((448, 896, 3), 200, np.uint8)
    small = np.zeros((20, 30, 3), np.uint8)
    assert downsample(big).shape == (IMAGE_MAX_W // 2, IMAGE_MAX_W, 3) and downsample(small).shape == small.shape
    assert downsample(np.zeros((1000, 10, 3), np.uint8)).shape[0] == IMAGE_MAX_H
    evs = image_events(4, 0, [((1, 14, 28), big)])
    assert evs[0].size == (448, 896) and evs[0].grid == (1, 14, 28) and evs[0].pixels.max() == 200


@pytest.mark.parametrize("bad", [
    dict(pixels=np.zeros((IMAGE_MAX_H + 1, 8, 3), np.uint8)),
    dict(pixels=np.zeros((8, 8, 3), np.float32)),
    dict(pixels=np.zeros((8, 8, 4), np.uint8)),
    dict(pixels=None),
    dict(grid=(1, 0, 3)),
    dict(grid=(1, 1 << 17, 1)),
    dict(index=3, count=99),
])
def test_a_hostile_image_event_is_rejected_whole(bad):
    good = dict(grid=(1, 2, 2), size=(64, 64), pixels=np.zeros((8, 8, 3), np.uint8))
    decode_event(encode_event(ImageState(**good)))
    with pytest.raises(ValueError):
        decode_event(encode_event(ImageState(**dict(good, **bad))))


@pytest.mark.parametrize("bad", [
    dict(attention=np.zeros((2, IMAGE_ATTN_TOKENS + 1), np.float16)),
    dict(attention=np.zeros((28, IMAGE_ATTN_BYTES // 56 + 1), np.float16)),
    dict(attention=np.zeros((2, 4), np.int32)),
    dict(attention=np.zeros((4,), np.float16)),
    dict(image_share=np.zeros((2, 2), np.float32)),
    dict(token_text="x" * 5000),
    dict(tokens=-1),
])
def test_a_hostile_image_attention_event_is_rejected_whole(bad):
    good = dict(step=1, tokens=4, attention=np.zeros((2, 4), np.float16), image_share=np.zeros(2, np.float32))
    decode_event(encode_event(ImageAttention(**good)))
    with pytest.raises(ValueError):
        decode_event(encode_event(ImageAttention(**dict(good, **bad))))


def test_unpatchify_inverts_the_processor():
    img = np.random.default_rng(3).integers(0, 256, (64, 96, 3)).astype(np.uint8)
    pv, grid = preprocess_images([img], min_pixels=64 * 96, max_pixels=64 * 96)
    assert np.array_equal(unpatchify(pv, grid[0]), img)
    with pytest.raises(ValueError):
        unpatchify(pv[:-1], grid[0])
