"""KV cache bytes: the contiguous reservation the sampler makes, and 16-token pages.

The sampler reserves prompt + max_new slots for every row up front (one array of shape
[layers, rows, kv heads, slots, head dim] for K and one for V). A paged cache allocates
16-token pages as a row fills them, so it holds only what the length distribution
reaches; with prefix sharing, the `group` samples of one prompt hold the prompt's full
pages once.
"""
from __future__ import annotations

import math
from typing import Dict

from vlmrl.plan.counts import kv_bytes_per_token
from vlmrl.plan.spec import RunSpec

PAGE_TOKENS = 16


def kv_figures(spec: RunSpec) -> Dict[str, int]:
    """Whole-run KV figures in bytes (all rows, all devices together)."""
    per_token = kv_bytes_per_token(spec.config, spec.dtype)
    rows, prompt = spec.rows, spec.prompt_len
    support = spec.lengths.support(spec.max_new)
    page = PAGE_TOKENS * per_token
    # expected pages of one row: ceil((prompt + completion) / 16) averaged over the lengths
    pages_row = sum(p * math.ceil((prompt + n) / PAGE_TOKENS) for n, p in support)
    # prefix sharing: full prompt pages once per prompt, the rest (the page the prompt ends
    # in, which the samples then write differently, and later pages) once per sample
    shared = prompt // PAGE_TOKENS
    pages_shared = spec.batch * shared + rows * (pages_row - shared)
    return {
        "kv_bytes_per_token": per_token,
        "kv_bytes": rows * spec.seq_len * per_token,
        "kv_bytes_paged": int(math.ceil(rows * pages_row)) * page,
        "kv_bytes_paged_shared_prompt": int(math.ceil(pages_shared)) * page,
        "kv_bytes_expected_used": int(round(rows * sum(p * (prompt + n) for n, p in support) * per_token)),
    }
