"""The tapped attention statistics (as they arrive on the bus) equal the same statistics
computed from Hugging Face `output_attentions` on the same tiny checkpoint and input."""
import numpy as np
import pytest

from conftest import _hf_inputs, make_prompt

pytestmark = pytest.mark.slow

V = 152000


def _hf_row_stats(att_lhqk, q: int, vision_k: np.ndarray) -> np.ndarray:
    """[L, H, 4] stats of query row q from HF attentions (keys 0..q are the valid ones)."""
    p = att_lhqk[:, :, q, :q + 1].astype(np.float64)
    n = q + 1
    ent = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0), axis=-1)
    focus = np.clip(1.0 - ent / np.log(n), 0, 1) if n > 1 else np.ones(p.shape[:2])
    return np.stack([focus, p.max(-1), p[..., vision_k[:q + 1]].sum(-1), p[..., 0]], axis=-1)


def test_tapped_stats_equal_hf_output_attentions(hf_tiny):
    import torch

    from vlmrl.core.sampling import Sampler, SamplingConfig
    from vlmrl.instrument.bus import Bus
    from vlmrl.instrument.events import ATTN_STATS
    from vlmrl.instrument.taps import TapConfig
    from vlmrl.models.qwen3vl import load_hf_checkpoint

    hf, path = hf_tiny
    model = load_hf_checkpoint(path)[0]
    bus = Bus(capacity=10_000)
    sub = bus.subscribe("test")
    tap = TapConfig(enabled=True, matrix_layer=0)
    s = Sampler(model, SamplingConfig(stop_ids=(), pad_id=0), tap=tap, bus=bus)
    s.host.stride = 1
    ids, pv, grid = make_prompt(V, [("text", 3), ("image", (1, 4, 6)), ("text", 5)], seed=11)
    n_new = 8
    out = s.generate(prompts=[ids], pixel_values=pv, image_grid_thw=grid, max_new_tokens=n_new)
    events = sub.drain()
    decode = sorted((e for e in events if e.kind == "decode"), key=lambda e: e.step)
    assert [e.step for e in decode] == list(range(n_new))

    full = np.concatenate([ids, out.tokens[0, :-1]])  # teacher-force what we generated
    with torch.no_grad():
        res = hf(**_hf_inputs(hf, full[None], None, pv, grid), output_attentions=True, use_cache=False)
    att = np.stack([a[0].float().numpy() for a in res.attentions])  # [L, H, S, S]
    vision_k = full == hf.config.image_token_id
    P = len(ids)
    worst = 0.0
    for e in decode:
        q = P - 1 + e.step  # prefill (step 0) reads the last prompt row; step i the row of token i-1
        ours = np.stack([e.attn_stats[name] for name in ATTN_STATS], axis=-1)
        ref = _hf_row_stats(att, q, vision_k)
        worst = max(worst, float(np.abs(ours - ref).max()))
    print(f"tapped attention stats vs HF output_attentions: max abs diff {worst:.2e}")
    assert worst <= 1e-4, f"max |tapped - HF| = {worst}"
    assert decode[0].attn_stats["vision"].max() > 0.01  # the image is actually attended to

    # positions and the image span as the dashboard gets them
    from vlmrl.models.qwen3vl.positions import get_rope_index

    pos, delta = get_rope_index(ids[None], grid, None, model.config)
    pad = out.prompt_ids.shape[1] - P  # the sampler left-pads the prompt into its bucket
    img = np.flatnonzero(ids == hf.config.image_token_id)
    assert decode[0].vision_span == (pad + img[0], pad + img[-1] + 1) and decode[0].vision_grid == (1, 4, 6)
    assert (decode[0].mrope_t, decode[0].mrope_h, decode[0].mrope_w) == tuple(int(x) for x in pos[:, 0, -1])
    for e in decode[1:]:  # decode queries sit at max prompt position + step on every axis
        assert e.mrope_t == e.mrope_h == e.mrope_w == int(pos.max()) + e.step

    # the prefill matrix (layer 0, mean over heads, pooled 1:1) is HF's, cropped to the prompt
    (mat,) = [e for e in events if e.kind == "attention_matrix"]
    assert mat.pool == 1 and mat.matrix.shape == (P, P)
    ref_m = att[0, :, :P, :P].mean(0)
    np.testing.assert_allclose(mat.matrix.astype(np.float32), ref_m, atol=1e-3)
    assert mat.token_types.count("vision") == int(vision_k[:P].sum())
