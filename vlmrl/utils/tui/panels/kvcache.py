"""KV CACHE MEMORY: one bar per shown layer (used/max), exact bytes, pages, status.

Bytes are those of the cache arrays the sampler allocated (DecodeState.kv_bytes), else
RunInfo's 2 (K and V) x layers x kv heads x head dim x itemsize x batch per cached token.
The cache is contiguous; "pages" count it in 16-token units (no paged cache exists). Qwen3-VL has no sliding window, so every layer holds the same
number of slots: the bars say so rather than inventing differences; the image-token
slots inside each bar are coloured. The shown layers follow the heatmap's page.
"""
from __future__ import annotations

import math
from types import MappingProxyType

from vlmrl.utils.tui.canvas import PLAIN, Canvas, sanitize, truncate
from vlmrl.utils.tui.palette import hbar
from vlmrl.utils.tui.panels import flow
from vlmrl.utils.tui.panels.attention import page_bounds
from vlmrl.utils.tui.panels.common import NA, fmt_bytes_pair, put, remember, share_row, title_row
from vlmrl.utils.tui.panels.rows import bar_cells, compose_row, pairs_line, sparse_canvas
from vlmrl.utils.tui.render_cache import RenderCache

TITLE = "KV CACHE MEMORY"
PAGE_TOKENS = 16
INFO_ROWS = 2  # bytes line and pages line
SHORT_DTYPE = MappingProxyType({"bfloat16": "bf16", "float16": "f16", "float32": "f32", "float64": "f64"})


def status(state, batch_index: int, now: float):
    """"⚡ WRITE" just after a step arrived (it wrote its K/V), "ACTIVE" while the cache
    holds tokens, "CLEARED" when it is empty, None before any decode event."""
    d = state.decode_for(batch_index)
    if d is None:
        return None
    if flow.just_arrived(state, batch_index, now) and d.cache_len > 0:
        return "⚡ WRITE"
    return "ACTIVE" if d.cache_len > 0 else "CLEARED"


def _bytes_per_token(run, memo: dict):
    """Exact K+V bytes per cached token for the whole batch; None when unknown (no
    RunInfo, or a dtype name numpy does not know, e.g. from a foreign recording)."""
    if run is None:
        return None
    # numpy's dtype lookup is the slow part and the figures rarely change: kept in
    # `memo` by value
    key = (run.dtype, run.num_layers, run.num_kv_heads, run.head_dim, run.batch)
    try:
        return memo[key]
    except KeyError:
        pass
    except TypeError:  # unhashable fields: not cached
        key = None
    try:
        value = int(run.kv_bytes_per_token())
    except (TypeError, ValueError):
        value = None
    if key is not None:
        remember(memo, key, value, 64)
    return value


def _device(in_use, limit, memo: dict) -> str:
    """fmt_bytes_pair of the device memory, which changes only with a new RunInfo (kept
    in `memo`)."""
    key = (in_use, limit)
    try:
        text = memo.get(key)
    except TypeError:  # unhashable figures: not cached
        return fmt_bytes_pair(in_use, limit)
    if text is None:
        text = remember(memo, key, fmt_bytes_pair(in_use, limit), 64)
    return text


def cache_key(state, view, now):
    b = view.batch_index % state.batch_size()
    st = status(state, b, now)
    return (state.row_version(b), state.run_v, b, st, st == "⚡ WRITE" and view.flash_on(now),
            view.layer_page, view.display_layers)


def _status_style(st, flash, theme):
    if st == "⚡ WRITE":
        return theme.write_on if flash else theme.write_off
    if st == "ACTIVE":
        return theme.warn
    return theme.na


def render(state, view, width, height, now, theme, cache=None) -> Canvas:
    cache = RenderCache() if cache is None else cache
    b = view.batch_index % state.batch_size()
    d = state.decode_for(b)
    # Rows are shared: the cached title and bar rows, the composed figure lines
    c = sparse_canvas(width, height)
    if width <= 0 or height <= 0:
        return c
    run = state.run
    st = status(state, b, now)
    share_row(c, 0, title_row(cache, width, TITLE, theme, right=st or NA,
                              right_style=_status_style(st, view.flash_on(now), theme)))
    used = None if d is None else int(d.cache_len)
    cap = int(d.cache_max) if d is not None and d.cache_max else (int(run.max_cache) if run else None)
    per_tok = _bytes_per_token(run, cache.memo("kvcache.per_token"))
    if height > 1:
        measured = d is not None and d.kv_bytes is not None and used
        if measured:  # the taps read it from the cache arrays the sampler allocated
            used_b = int(d.kv_bytes)
            alloc_b = int(d.kv_bytes) // used * cap if cap else None
        else:
            used_b = per_tok * used if per_tok is not None and used is not None else None
            alloc_b = per_tok * cap if per_tok is not None and cap else None
        pairs = [("KV", fmt_bytes_pair(used_b, alloc_b))]
        # "host": the backend reports no device memory (CPU): the process's resident memory
        where = "host" if run is not None and run.memory_source == "host" else "device"
        in_use, limit = (None, None) if run is None else (run.device_memory_in_use, run.device_memory_limit)
        per = per_device(run)
        if per is not None:  # several devices that each report: their sum (per device on row 3)
            where, in_use, limit = "devices Σ", sum(per[0]), sum(per[1]) or None
        dev = _device(in_use, limit, cache.memo("kvcache.device")) if in_use is not None and limit else NA
        pairs.append((where, dev))
        if alloc_b is not None and limit:
            pairs.append((f"KV/{where.split()[0]}", f"{100.0 * alloc_b / limit:.1f}%"))
        pairs_line(cache, c, 1, pairs, theme)
    if height > 2:
        pages = NA if used is None or not cap else f"{math.ceil(used / PAGE_TOKENS)}/{math.ceil(cap / PAGE_TOKENS)}"
        slots = NA if used is None or not cap else f"{used}/{cap}"
        # the cache is one contiguous buffer per layer: "pages" count it in 16-token units
        pairs = [("slots", slots), ("pages", pages)]
        if run is not None:  # the exact-bytes formula, shown only when it is known
            dt = SHORT_DTYPE.get(run.dtype, run.dtype)
            shape = f"2×{run.num_layers}L×{run.num_kv_heads}kv×{run.head_dim}d×{dt}×b{run.batch}"
            pairs += [("", shape), ("", f"(contiguous, counted in {PAGE_TOKENS}-tok pages)")]
        pairs_line(cache, c, 2, pairs, theme)
    info = INFO_ROWS
    if run is not None and (run.device_count > 1 or run.devices_memory_in_use):
        info += 1
        if height > 3:
            label = "per device"
            text = truncate(devices_text(run), max(1, width - len(label) - 3))
            pairs_line(cache, c, 3, [(label, text)], theme, keep=True)
    rows = height - 1 - info
    L = state.num_layers()
    if rows <= 0 or L is None or used is None or not cap:
        return c
    lo, hi, _, _ = page_bounds(L, rows, view.layer_page)
    _bars(c, 1 + info, lo, hi, d, used, cap, theme, cache.memo("kvcache.blocks"))
    return c


def per_device(run):
    """((bytes in use), (limits)) of each device when there are several and each reported
    its own memory_stats(); else None."""
    if run is None or len(run.devices_memory_in_use) < 2:
        return None
    n = len(run.devices_memory_in_use)
    limits = tuple(run.devices_memory_limit) if len(run.devices_memory_limit) == n else (0,) * n
    return tuple(run.devices_memory_in_use), limits


def devices_text(run) -> str:
    """The per-device memory line: each device's bytes in use (GiB/MiB of the largest), or
    why there is none (a backend without memory_stats, e.g. CPU)."""
    used = tuple(run.devices_memory_in_use)
    if not used:
        return f"n/a, {sanitize(str(run.device_kind))} reports none · {run.device_count} devices"
    big, unit = max(used), "B"
    scale = 1.0
    for u in ("KiB", "MiB", "GiB", "TiB"):
        if big < 1024 * scale:
            break
        scale *= 1024.0
        unit = u
    return f"{unit} " + " ".join(f"{b / scale:.1f}" if unit != "B" else str(b) for b in used)


def _bars(c: Canvas, y0: int, lo: int, hi: int, d, used: int, cap: int, theme, blocks: dict) -> None:
    """One bar per shown layer. All layers hold the same slots, so the bars are one row
    drawn once and relabelled; the figures are on the lines above (they would otherwise
    repeat on every row and change on every row each step). Blocks are kept in `blocks`."""
    label_w = len(f"L{hi - 1}") + 1
    bar_w = max(4, c.width - label_w - 3)
    bar = bar_cells(used / cap, bar_w)
    if type(bar) is not str:
        bar = hbar(used / cap, bar_w)
    span = d.vision_span
    v0 = v1 = 0
    if span is not None:
        # cells covering the image-token slots, coloured as vision
        v0 = int(int(span[0]) / cap * bar_w)
        v1 = min(len(bar.rstrip()), max(v0 + 1, int(math.ceil(int(span[1]) / cap * bar_w))))
    # the rows repeat while the bar does not move (a cell holds 8 fill steps): the
    # whole block of shown layers is built once per bar
    n = max(0, min(hi - lo, c.height - y0))
    key = (bar, v0, v1, label_w, lo, lo + n, c.width, id(theme))
    block = blocks.get(key)
    if block is None:
        rows = [_bar_row(layer, c.width, label_w, bar, v0, v1, theme) for layer in range(lo, lo + n)]
        block = remember(blocks, key, ([tuple(r[0]) for r in rows], [tuple(r[1]) for r in rows]), 256)
    # the cached rows themselves: canvases are read-only once returned
    c.chars[y0:y0 + n] = block[0]
    c.styles[y0:y0 + n] = block[1]


def _bar_row(layer: int, width: int, label_w: int, bar: str, v0: int, v1: int, theme) -> tuple:
    """`  L5 ▕█████▍   ▏`, the image-token cells in the vision colour."""
    label = f"L{layer}".rjust(label_w - 1)
    if len(label) < label_w and 0 <= v0:
        if v1 <= v0:
            v0 = v1 = 0
        row = compose_row(width, 0, [(label, theme.label), (" " * (label_w - len(label)), PLAIN),
                                     ("▕", theme.rule), (bar[:v0], theme.good), (bar[v0:v1], theme.vision),
                                     (bar[v1:], theme.good), ("▏", theme.rule)])
        if row is not None:
            return row
    r = Canvas(width, 1)
    x = put(r, 0, 0, label, theme.label)
    x = put(r, label_w, 0, "▕", theme.rule)
    start = x
    x = put(r, x, 0, bar, theme.good)
    if v1 > v0:
        put(r, start + v0, 0, bar[v0:v1], theme.vision)
    put(r, x, 0, "▏", theme.rule)
    return r.chars[0], r.styles[0]
