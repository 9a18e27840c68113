"""The image view's overlay values are the attention the model computed: the tapped
ImageAttention events equal the same weights read from Hugging Face `output_attentions`
on the same tiny checkpoint and inputs (two images in one prompt), and the ImageState
events hold the images the pixel rows encode."""
import numpy as np
import pytest

from conftest import _hf_inputs, make_prompt

pytestmark = pytest.mark.slow

V = 152000
GRIDS = ((1, 4, 6), (1, 4, 4))  # two images: merged grids 1x2x3 and 1x2x2


def tapped_run(hf_tiny, n_new):
    """A real tiny checkpoint sampled with taps on at stride 1 over a prompt with both images:
    (hf model, prompt ids, pixel rows, grids, SampleOutput, events)."""
    from vlmrl.core.sampling import Sampler, SamplingConfig
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.taps import TapConfig
    from vlmrl.models.qwen3vl import load_hf_checkpoint

    hf, path = hf_tiny
    model = load_hf_checkpoint(path)[0]
    bus = Bus(capacity=10_000)
    sub = bus.subscribe("test")
    s = Sampler(model, SamplingConfig(stop_ids=(), pad_id=0), tap=TapConfig(enabled=True), bus=bus)
    s.host.stride = 1
    ids, pv, grid = make_prompt(V, [("text", 3), ("image", GRIDS[0]), ("text", 2), ("image", GRIDS[1]),
                                    ("text", 4)], seed=5)
    out = s.generate(prompts=[ids], pixel_values=pv, image_grid_thw=grid, max_new_tokens=n_new)
    return hf, ids, pv, grid, out, sub.drain()


def test_image_attention_events_equal_hf_output_attentions(hf_tiny):
    import torch

    from vlmrl.instrument.image_tap import downsample
    from vlmrl.models.qwen3vl.processor import unpatchify

    n_new = 6
    hf, ids, pv, grid, out, events = tapped_run(hf_tiny, n_new)
    att = sorted((e for e in events if e.kind == "image_attention"), key=lambda e: e.step)
    images = sorted((e for e in events if e.kind == "image"), key=lambda e: e.index)
    assert [e.step for e in att] == list(range(n_new))
    assert att[0].phase == "prefill" and att[1].phase == "decode"

    # the images: one event each, merged grids, pixels = the rows' image downsampled
    assert [(e.index, e.count, e.grid) for e in images] == [(0, 2, (1, 2, 3)), (1, 2, (1, 2, 2))]
    at = 0
    for e, g in zip(images, GRIDS):
        n = int(np.prod(g))
        want = downsample(unpatchify(pv[at:at + n], g))
        at += n
        assert e.size == (g[1] * 16, g[2] * 16) and np.array_equal(e.pixels, want)

    full = np.concatenate([ids, out.tokens[0, :-1]])  # teacher-force what we generated
    with torch.no_grad():
        res = hf(**_hf_inputs(hf, full[None], None, pv, grid), output_attentions=True, use_cache=False)
    probs = np.stack([a[0].float().numpy() for a in res.attentions]).astype(np.float64)  # [L, H, S, S]
    vision = np.flatnonzero(full == hf.config.image_token_id)
    assert len(vision) == 6 + 4
    P = len(ids)
    worst = worst_share = 0.0
    for e in att:
        q = P - 1 + e.step  # step 0 is read at the last prompt row; step i at the row of token i-1
        ref = probs[:, :, q, vision].mean(axis=1)  # [L, N]: mean over heads
        assert e.tokens == 10 and e.attention.shape == ref.shape
        worst = max(worst, float(np.abs(e.attention.astype(np.float64) - ref).max()))
        worst_share = max(worst_share, float(np.abs(e.image_share - ref.sum(-1)).max()))
        assert e.token_id == int(out.tokens[0, e.step])
    print(f"image attention vs HF output_attentions: max abs diff {worst:.2e} (float16), share {worst_share:.2e}")
    assert worst <= 5e-4, worst  # float16 on the wire: ~3 significant digits
    assert worst_share <= 1e-5, worst_share
    assert att[0].image_share.max() > 0.01  # the image is attended to at all


def test_pooled_image_attention_equals_hf_summed_over_each_cells_patches(hf_tiny, monkeypatch):
    """With a budget of 4 cells, the 6 + 4 image tokens travel pooled 2x2 (3 cells): each cell
    is HF's attention summed over the merged patches it covers."""
    import torch

    from vlmrl.instrument import taps

    monkeypatch.setattr(taps, "IMAGE_ATTN_BYTES", 16)  # 2 layers x 2 bytes: 4 cells
    hf, ids, pv, grid, out, events = tapped_run(hf_tiny, 3)
    att = sorted((e for e in events if e.kind == "image_attention"), key=lambda e: e.step)
    assert att and all(e.pool == 2 and e.attention.shape == (2, 3) and e.tokens == 10 for e in att)

    full = np.concatenate([ids, out.tokens[0, :-1]])
    with torch.no_grad():
        res = hf(**_hf_inputs(hf, full[None], None, pv, grid), output_attentions=True, use_cache=False)
    probs = np.stack([a[0].float().numpy() for a in res.attentions]).astype(np.float64)
    vision = np.flatnonzero(full == hf.config.image_token_id)
    cells = [[0, 1, 3, 4], [2, 5], [6, 7, 8, 9]]  # 1x2x3 pooled 2x2 -> 1x1x2; 1x2x2 -> 1x1x1
    worst = 0.0
    for e in att:
        per_token = probs[:, :, len(ids) - 1 + e.step, vision].mean(axis=1)  # [L, 10]
        ref = np.stack([per_token[:, c].sum(axis=1) for c in cells], axis=1)
        worst = max(worst, float(np.abs(e.attention.astype(np.float64) - ref).max()))
    print(f"pooled image attention vs HF: max abs diff {worst:.2e}")
    assert worst <= 5e-4, worst
