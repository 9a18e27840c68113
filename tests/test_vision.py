"""Vision tower parity against Hugging Face's Qwen3VLVisionModel (CPU, fp32, random tiny config)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from vlmrl.models.qwen3vl.config import VisionConfig  # noqa: E402
from vlmrl.models.qwen3vl.vision import PAD_SEGMENT, VisionTower, prepare_vision_inputs  # noqa: E402

from conftest import load_hf_tensors  # noqa: E402

# hd = 8 (divisible by 4), S = 8 pos grid, three blocks so the deepstack picks are not just "all".
CFG = VisionConfig(depth=3, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=48,
                   num_position_embeddings=64, deepstack_visual_indexes=(0, 2))


def _hf_vision_model(cfg: VisionConfig, seed: int = 0):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    hf_cfg = Qwen3VLVisionConfig(
        depth=cfg.depth, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_heads=cfg.num_heads, in_channels=3, patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
        out_hidden_size=cfg.out_hidden_size, num_position_embeddings=cfg.num_position_embeddings,
        deepstack_visual_indexes=list(cfg.deepstack_visual_indexes), hidden_act="gelu_pytorch_tanh")
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen3VLVisionModel(hf_cfg).eval()
    # Randomise everything: HF init leaves norms at 1 and biases at 0, which hides bugs (docs/qwen3vl.md §10.2).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif name == "pos_embed.weight":
                p.copy_(0.5 * torch.randn_like(p))  # large, so interpolation mistakes show
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def models():
    hf = _hf_vision_model(CFG)
    tensors = {"model.visual." + k: v.detach().numpy() for k, v in hf.state_dict().items()}
    tower = VisionTower(CFG, dtype=jnp.float32, rngs=nnx.Rngs(1))
    used = load_hf_tensors(tower, tensors, "model.visual.")
    assert used == set(tensors), f"unused HF tensors: {sorted(set(tensors) - used)}"
    return hf, tower


_call = jax.jit(lambda m, p, v: m(p, v))


def _run_both(hf, tower, grid, seed=0):
    rng = np.random.default_rng(seed)
    n = int(np.prod(np.asarray(grid), axis=1).sum())
    pv = rng.standard_normal((n, 1536)).astype(np.float32)
    with torch.no_grad():
        out = hf(torch.from_numpy(pv), grid_thw=torch.tensor(grid))
    vin = prepare_vision_inputs(np.asarray(grid), CFG)
    embeds, deep = _call(tower, jnp.asarray(pv), vin)
    return out, np.asarray(embeds), [np.asarray(d) for d in deep], pv


# The bar is 1e-4; fp32 on CPU measures ~7e-7, and a tanh-GELU merger bug shows as
# ~1.2e-4, so the tighter bound keeps such bugs from hiding under the tolerance.
TOL = 1e-5


def _maxdiff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# (2, 4, 4): two frames share coordinates and pos-embeds but attend separately.
@pytest.mark.parametrize("grid", [[[1, 4, 6]], [[1, 6, 2]], [[1, 10, 8]], [[2, 4, 4]]])
def test_one_image_matches_hf(models, grid):
    hf, tower = models
    out, embeds, deep, _ = _run_both(hf, tower, grid)
    assert embeds.shape == (np.prod(grid[0]) // 4, CFG.out_hidden_size)
    assert _maxdiff(embeds, out.pooler_output) <= TOL
    assert len(deep) == len(out.deepstack_features) == 2
    for mine, ref in zip(deep, out.deepstack_features):
        assert _maxdiff(mine, ref) <= TOL
    # The outputs must carry signal, or a parity check of ~0 against ~0 would pass trivially.
    assert float(np.abs(embeds).mean()) > 1e-2


def test_two_images_of_different_grids_match_hf(models):
    hf, tower = models
    grid = [[1, 4, 6], [1, 6, 2]]
    out, embeds, deep, pv = _run_both(hf, tower, grid, seed=1)
    assert embeds.shape == ((24 + 12) // 4, CFG.out_hidden_size)
    assert _maxdiff(embeds, out.pooler_output) <= TOL
    for mine, ref in zip(deep, out.deepstack_features):
        assert _maxdiff(mine, ref) <= TOL
    # Attention is per image: the first image's tokens equal a run of that image alone.
    _, alone, _, _ = _run_both(hf, tower, [[1, 4, 6]], seed=1)
    assert _maxdiff(embeds[:6], alone) <= 1e-5


def test_padding_patches_do_not_change_real_outputs(models):
    _, tower = models
    grid = np.array([[1, 4, 6], [1, 6, 2]])
    rng = np.random.default_rng(3)
    pv = rng.standard_normal((36, 1536)).astype(np.float32)
    plain = _call(tower, jnp.asarray(pv), prepare_vision_inputs(grid, CFG))
    vin = prepare_vision_inputs(grid, CFG, pad_to=40)
    assert vin.segment_ids.shape == (40,) and (vin.segment_ids[36:] == PAD_SEGMENT).all()
    padded = _call(tower, jnp.asarray(np.concatenate([pv, rng.standard_normal((4, 1536)).astype(np.float32)])), vin)
    assert padded[0].shape == (10, CFG.out_hidden_size)
    assert _maxdiff(padded[0][:9], plain[0]) <= 1e-5
    for a, b in zip(padded[1], plain[1]):
        assert _maxdiff(a[:9], b) <= 1e-5


def test_prepare_matches_hf_index_helpers():
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

    grid = np.array([[1, 4, 6], [2, 6, 2], [1, 2, 14]])
    vin = prepare_vision_inputs(grid, CFG)
    tg = torch.tensor(grid)
    idx, w = get_vision_interpolation_indices_and_weights(tg, 8, mode="bilinear", align_corners=True,
                                                           spatial_merge_size=2)
    np.testing.assert_array_equal(vin.pos_idx, idx.numpy())
    np.testing.assert_allclose(vin.pos_w, w.numpy(), atol=1e-7)
    np.testing.assert_array_equal(vin.coords_hw, get_vision_position_ids(tg, 2).numpy())
    # one attention segment per frame, bounded where HF's cumulative patch counts are
    assert list(np.concatenate([[0], np.cumsum(np.bincount(vin.segment_ids))])) == [0, 24, 36, 48, 76]


def test_bad_grids_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        prepare_vision_inputs(np.array([[1, 3, 4]]), CFG)
    with pytest.raises(ValueError, match="shape"):
        prepare_vision_inputs(np.array([1, 4, 4]), CFG)
    with pytest.raises(ValueError, match="pad_to"):
        prepare_vision_inputs(np.array([[1, 4, 4]]), CFG, pad_to=8)


@pytest.mark.slow
def test_bf16_tower_tracks_hf_bf16(models):
    hf, tower = models
    tensors = {"model.visual." + k: v.detach().numpy() for k, v in hf.state_dict().items()}
    t16 = VisionTower(CFG, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    load_hf_tensors(t16, tensors, "model.visual.")
    grid = np.array([[1, 4, 6], [1, 6, 2]])  # the shapes another test already compiled in fp32
    pv = np.random.default_rng(0).standard_normal((36, 1536)).astype(np.float32)
    vin = prepare_vision_inputs(grid, CFG)
    e16, d16 = _call(t16, jnp.asarray(pv), vin)
    e32, _ = _call(tower, jnp.asarray(pv), vin)
    assert e16.dtype == jnp.bfloat16 and d16[0].dtype == jnp.bfloat16
    hf16 = _hf_vision_model(CFG)
    hf16.load_state_dict(hf.state_dict())
    hf16 = hf16.to(torch.bfloat16)
    with torch.no_grad():
        ref16 = hf16(torch.from_numpy(pv), grid_thw=torch.tensor(grid)).pooler_output.float().numpy()
    scale = float(np.abs(np.asarray(e32)).max())
    mine16 = np.asarray(e16, np.float32)
    # bf16 has ~3 significant digits; both sides round at the same points, so they stay
    # much closer to each other than to the fp32 result.
    assert _maxdiff(mine16, ref16) <= 0.02 * scale
    assert _maxdiff(mine16, e32) <= 0.05 * scale


def test_jit_compiles_once_per_patch_count_not_per_image_split(models):
    _, tower = models
    traces = []

    @jax.jit
    def run(pv, vin):
        traces.append(1)
        return tower(pv, vin)[0]

    pv = jnp.zeros((40, 1536), jnp.float32)
    a = prepare_vision_inputs(np.array([[1, 4, 6], [1, 6, 2]]), CFG, pad_to=40)
    b = prepare_vision_inputs(np.array([[1, 2, 2], [1, 2, 4], [1, 4, 4]]), CFG, pad_to=40)
    run(pv, a)
    run(pv, b)
    assert len(traces) == 1
    moved = jax.tree_util.tree_map(jnp.asarray, b)
    assert isinstance(moved, type(b)) and moved.segment_ids.shape == (40,)
