"""Attention matrix view: render time against matrix size.

The view reads only the cells on screen, so rendering a 4096 x 4096 matrix should cost
about what 64 x 64 costs. Prints a table, then (last line) one JSON object with
`ms_64`, `ms_1024`, `ms_4096` (fastest render: on a shared machine the minimum is the
cost of the code, the median adds other processes' load; medians are reported too) and
`ratio_4096_64` (goal <= 1.5).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import types

import numpy as np

from vlmrl.instrument.events import AttentionMatrix
from vlmrl.utils.tui.palette import palette_for
from vlmrl.utils.tui.panels import matrix
from vlmrl.utils.tui.view import ViewState


def make_matrix(n: int, seed: int = 0) -> AttentionMatrix:
    rng = np.random.default_rng(seed)
    m = np.tril(rng.random((n, n), dtype=np.float32))
    m /= m.sum(axis=1, keepdims=True)
    toks = [f"tok{i}" for i in range(n)]
    kinds = ["special"] + ["vision"] * (n // 4) + ["text"] * (n - 1 - n // 4)
    return AttentionMatrix(layer=None, head=None, query_tokens=toks, key_tokens=toks, token_types=kinds,
                           matrix=m.astype(np.float16), sliding_window=n // 2)


def time_view(n: int, width: int, height: int, repeats: int) -> tuple:
    ev = make_matrix(n)
    state = types.SimpleNamespace(matrix=ev, meta={}, matrix_v=1)
    theme = palette_for(True)
    times = []
    for i in range(repeats):
        # the cursor walks through the middle of the matrix so every render reads new cells
        mv = matrix.MatrixView(row=n // 2 + (i % 7), col=n // 2 - (i % 5), scale="row")
        view = ViewState(mode="matrix", mode_state={"matrix": mv})
        t0 = time.perf_counter()
        matrix.render(state, view, width, height, 0.0, theme)
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3, statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=60)
    args = ap.parse_args()
    sizes = (64, 1024, 4096)
    time_view(64, args.width, args.height, 5)  # warm caches (glyph widths, sanitiser)
    timed = {n: time_view(n, args.width, args.height, args.repeats) for n in sizes}
    ms = {n: t[0] for n, t in timed.items()}
    med = {n: t[1] for n, t in timed.items()}
    print(f"attention matrix view, {args.width}x{args.height} screen, {args.repeats} renders each")
    _, _, cols, rows = matrix._geometry(args.width, args.height)
    print(f"{'matrix':>12} {'min ms':>8} {'median ms':>10} {'vs 64²':>8} {'cells drawn':>12}")
    for n in sizes:
        # a 64x64 matrix does not fill a wide screen: fewer cells, hence part of the ratio
        print(f"{f'{n}x{n}':>12} {ms[n]:>8.3f} {med[n]:>10.3f} {ms[n] / ms[64]:>8.2f} "
              f"{min(n, cols) * min(n, rows):>12}")
    print(json.dumps({"ms_64": round(ms[64], 4), "ms_1024": round(ms[1024], 4), "ms_4096": round(ms[4096], 4),
                      "ratio_4096_64": round(ms[4096] / ms[64], 3),
                      "ratio_4096_64_median": round(med[4096] / med[64], 3),
                      "width": args.width, "height": args.height}))


if __name__ == "__main__":
    main()
