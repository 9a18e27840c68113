"""What the image view showed as a run learned, computed straight from its log.

For every generation that has the watched sample's image and the attention of its first
token (step 0: the answer on the colour task), reads the image's pixels and the token's
per-layer attention on the merged patches, and reports per window of generations:
  share     the token's attention on all image tokens (mean over heads, then over layers)
  on-shape  attention-weighted shape fraction of the patches: sum_k a_k f_k / sum_k a_k,
            where f_k is the fraction of patch k's pixels that belong to the shape
  uniform   the same with equal weights (what attention blind to the shape would give)
  top=shape how often the most attended patch is the patch with the most shape in it
  chance    how often a patch drawn at random would be (ties counted as the script does)
  shape/bg  mean weight on a mostly-shape patch (f >= 0.5) over that on a mostly-background
            one (f < 0.5), over the images that have both (1: the token does not tell them apart)
  correct   the token is the prompt's answer (from the update's group event)
Shape pixels: max channel > 100 (the background is grey 20..68; every shape colour has a
channel >= 150). Usage: python scripts/image_view_learning.py RUN.jsonl [--windows 4]
Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from vlmrl.instrument.events import decode_event  # noqa: E402


def shape_fraction(pixels: np.ndarray, grid) -> np.ndarray:
    """[h, w] fraction of shape pixels in each merged patch (pixels cover the patch grid evenly)."""
    _, gh, gw = grid
    mask = pixels.max(axis=-1) > 100
    H, W = mask.shape
    ys = np.minimum((np.arange(H) * gh) // H, gh - 1)
    xs = np.minimum((np.arange(W) * gw) // W, gw - 1)
    out = np.zeros((gh, gw))
    np.add.at(out, (ys[:, None], xs[None, :]), mask)
    return out / np.maximum(np.bincount(ys)[:, None] * np.bincount(xs)[None, :], 1)


def read(path: str):
    images, first, answers = {}, {}, {}
    with open(path, "rb") as fh:
        for line in fh:
            try:
                ev = decode_event(json.loads(line))
            except ValueError:
                continue  # the header and anything not an event
            if ev.kind == "image" and ev.index == 0:
                images[ev.generation] = ev
            elif ev.kind == "image_attention" and ev.step == 0:
                first[ev.generation] = ev
            elif ev.kind == "group" and ev.answers:
                answers[ev.step] = ev.answers[0]
    rows = []
    for g in sorted(set(images) & set(first)):
        img, att = images[g], first[g]
        f = shape_fraction(img.pixels, img.grid).reshape(-1)
        a = att.attention.astype(np.float64).mean(axis=0)[:f.size]
        answer = answers.get(g - 1)  # the trainer samples once per update: generation g is update g-1
        rows.append(dict(generation=g, share=float(att.image_share.mean()),
                         share_layers=[float(x) for x in att.image_share],
                         on_shape=float((a * f).sum() / max(a.sum(), 1e-12)), uniform=float(f.mean()),
                         top_is_shape=bool(f[int(np.argmax(a))] >= f.max()), chance=float(np.mean(f >= f.max())),
                         shape_bg=(float(a[f >= 0.5].mean() / max(a[f < 0.5].mean(), 1e-12))
                                   if (f >= 0.5).any() and (f < 0.5).any() else None),
                         correct=None if answer is None else att.token_text.strip() == answer))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--windows", type=int, default=4)
    args = ap.parse_args(argv)
    rows = read(args.log)
    if not rows:
        print(f"{args.log}: no generation with both an image and its first token's attention", file=sys.stderr)
        return 2
    parts = np.array_split(np.arange(len(rows)), max(1, min(args.windows, len(rows))))
    out = []
    print(f"{'generations':>13} {'share':>7} {'by layer':>16} {'on-shape':>9} {'uniform':>8} {'top=shape':>9} {'chance':>7} {'shape/bg':>8} {'correct':>8}")
    for idx in parts:
        rs = [rows[i] for i in idx]
        known = [r["correct"] for r in rs if r["correct"] is not None]
        w = dict(first=rs[0]["generation"], last=rs[-1]["generation"],
                 share=float(np.mean([r["share"] for r in rs])),
                 share_layers=[float(x) for x in np.mean([r["share_layers"] for r in rs], axis=0)],
                 on_shape=float(np.mean([r["on_shape"] for r in rs])), uniform=float(np.mean([r["uniform"] for r in rs])),
                 top_is_shape=float(np.mean([r["top_is_shape"] for r in rs])),
                 chance=float(np.mean([r["chance"] for r in rs])),
                 shape_bg=float(np.mean([r["shape_bg"] for r in rs if r["shape_bg"] is not None] or [np.nan])),
                 correct=float(np.mean(known)) if known else None)
        out.append(w)
        layers = " ".join(f"{x:.3f}" for x in w["share_layers"][:4])
        corr = "n/a" if w["correct"] is None else f"{w['correct']:.2f}"
        print(f"{w['first']:>6}-{w['last']:<6} {w['share']:7.3f} {layers:>16} {w['on_shape']:9.3f} {w['uniform']:8.3f} "
              f"{w['top_is_shape']:9.2f} {w['chance']:7.2f} {w['shape_bg']:8.2f} {corr:>8}")
    print(json.dumps({"log": args.log, "generations": len(rows), "windows": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
