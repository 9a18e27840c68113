"""Decode throughput: vlmrl's jitted sampler vs Hugging Face `generate`, same weights, same
prompt, same number of new greedy tokens.

The tiny preset builds one random HF checkpoint (tests/hf_oracle.py) and loads it into both,
so the generated tokens must also agree. Larger presets use independent random weights on each
side (throughput only; HF runs on CUDA when torch has it, else on the CPU).

    python scripts/bench_decode.py                                  # tiny, CPU, about 1-2 minutes
    python scripts/bench_decode.py --preset 2b --dtype bfloat16     # on a GPU machine

Prints a table; the last line is one JSON object with ratio_vs_hf (goal >= 2).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # hf_oracle: the tiny checkpoint builder

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vlmrl.core.sampling import Sampler, SamplingConfig  # noqa: E402


def build_pair(preset: str, dtype: str):
    """(hf_model, our_model, same_weights)."""
    import torch

    if preset == "tiny":
        from hf_oracle import build_tiny_checkpoint

        from vlmrl.models.qwen3vl import load_hf_checkpoint

        hf, path = build_tiny_checkpoint(dtype=dtype)
        return hf, load_hf_checkpoint(path, dtype=jnp.dtype(dtype))[0], True
    from flax import nnx
    from transformers import Qwen3VLConfig as HFConfig
    from transformers import Qwen3VLForConditionalGeneration

    from vlmrl.models.qwen3vl import Qwen3VL, Qwen3VLConfig

    cfg = Qwen3VLConfig.preset(preset)
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    hf = Qwen3VLForConditionalGeneration(HFConfig(**cfg.to_hf_dict())).to(tdt).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    if torch.cuda.is_available():
        hf = hf.cuda()
    ours = Qwen3VL(cfg, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    return hf, ours, False


def hf_generate(hf, ids: np.ndarray, n: int) -> np.ndarray:
    import torch

    dev = next(hf.parameters()).device
    x = torch.from_numpy(ids).to(dev)
    with torch.no_grad():
        out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, ids.shape[1]:].cpu().numpy()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3, help="interleaved ours/HF pairs after one warm-up each")
    args = ap.parse_args(argv)

    import torch

    t_start = time.perf_counter()
    hf, ours, same = build_pair(args.preset, args.dtype)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 100_000, (args.batch, args.prompt_len)).astype(np.int64)
    sampler = Sampler(ours, SamplingConfig(stop_ids=(), pad_id=0))
    n = args.new_tokens

    def run_ours():
        t0 = time.perf_counter()
        out = sampler.generate(prompts=list(ids), max_new_tokens=n)
        return time.perf_counter() - t0, out.tokens

    def run_hf():
        t0 = time.perf_counter()
        toks = hf_generate(hf, ids, n)
        return time.perf_counter() - t0, toks

    t_compile, ours_tokens = run_ours()  # includes jit compilation
    _, hf_tokens = run_hf()
    ours_s, hf_s = [], []
    for rep in range(args.reps):
        for fn, acc in ((run_ours, ours_s), (run_hf, hf_s))[:: 1 if rep % 2 == 0 else -1]:
            acc.append(fn()[0])
    tok = args.batch * n
    ours_tps, hf_tps = tok / statistics.median(ours_s), tok / statistics.median(hf_s)
    ratios = [h / o for o, h in zip(ours_s, hf_s)]
    match = bool(np.array_equal(ours_tokens, hf_tokens)) if same else None
    result = dict(
        ratio_vs_hf=round(statistics.median(ratios), 3), ours_tokens_per_s=round(ours_tps, 1),
        hf_tokens_per_s=round(hf_tps, 1), ours_first_call_s=round(t_compile, 2), tokens_match=match,
        preset=args.preset, dtype=args.dtype, batch=args.batch, prompt_len=args.prompt_len, new_tokens=n,
        reps=args.reps, jax_device=str(jax.devices()[0].device_kind), hf_device=str(next(hf.parameters()).device),
        torch_threads=torch.get_num_threads(), wall_s=round(time.perf_counter() - t_start, 1),
    )
    print(f"decode: preset {args.preset} {args.dtype}, batch {args.batch}, prompt {args.prompt_len}, {n} new greedy "
          f"tokens; jax on {result['jax_device']}, HF on {result['hf_device']} ({result['torch_threads']} threads)")
    print(f"{'rep':>4} {'ours s':>8} {'HF s':>8} {'HF/ours':>8}")
    for i, (o, h) in enumerate(zip(ours_s, hf_s)):
        print(f"{i:>4} {o:>8.3f} {h:>8.3f} {h / o:>8.2f}")
    print(f"tokens/s: ours {ours_tps:.1f}, HF {hf_tps:.1f}; ratio {result['ratio_vs_hf']} (goal >= 2); "
          f"first call (compile) {t_compile:.1f} s; tokens match: {match}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
