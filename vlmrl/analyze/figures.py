"""PNG figures of a report (matplotlib, the `report` extra): every figure draws numbers that
report.json holds, or the newest recorded matrix itself.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, not pyplot: no global
state, no display needed. Token texts come from a log and are untrusted: `label` makes
control characters visible, cuts them short, and they are drawn with mathtext off.
"""
from __future__ import annotations

import io
import os
import unicodedata
import warnings
from typing import Callable, Optional

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from vlmrl.instrument.events import GROUP_METRICS

TYPE_COLOURS = {"vision": "#e8812a", "text": "#8f99a3", "special": "#7b4fb8"}
ROW_PARTS = {"image": TYPE_COLOURS["vision"], "prompt_text": TYPE_COLOURS["text"], "text": TYPE_COLOURS["text"],
             "generated": "#3c8d5a"}
# Matrices up to this many tokens get one tick label per token; larger ones get none.
MAX_LABELLED = 48


def label(text, width: int = 12) -> str:
    """A token text safe to draw: control/format characters as \\x.. escapes, at most `width` chars."""
    out = []
    for ch in str(text):
        cat = unicodedata.category(ch)
        out.append(ch if cat[0] not in "CZ" or ch == " " else f"\\x{ord(ch):02x}" if ord(ch) < 256 else "\\u%04x" % ord(ch))
    s = "".join(out)
    return s if len(s) <= width else s[: width - 1] + "\u2026"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _heat(fig, ax, data, title, xlabel, ylabel, cbar_label, **kw):
    im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=kw.pop("cmap", "viridis"), **kw)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, label=cbar_label)
    return im


def heads_figure(report: dict) -> Optional[Figure]:
    """Per layer x head mean of each recorded statistic."""
    names = report["head_stats"]["names"]
    layers = report["layers"]
    if not names or not layers:
        return None
    cols = min(len(names), 2)
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(5.2 * cols, 0.9 + rows * (1.2 + 0.16 * len(layers))), layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        grid = np.array([[h[name] for h in layer["heads"]] for layer in layers])
        n = report["head_stats"]["events"][name]
        _heat(fig, ax, grid, f"{name}: mean of {n} events", "head", "layer", name)
        _int_ticks(ax, grid.shape)
    fig.suptitle(f"{report['run']['model'] or 'run'}: attention statistics per layer \u00d7 head "
                 "(newest query, prefill and decode)", fontsize=11)
    return fig


def _int_ticks(ax, shape):
    for axis, n in ((ax.yaxis, shape[0]), (ax.xaxis, shape[1])):
        step = max(1, n // 16)
        axis.set_ticks(range(0, n, step))


def _bin_x(bins: list) -> np.ndarray:
    return np.array([sum(b["updates"]) / 2.0 for b in bins])


def _bin_columns(bins: list, width: int, cols: list, rows: int) -> tuple:
    """(x edges, grid [rows, columns]) for pcolormesh: one column per bin at its updates, and
    an empty (NaN) column over any gap between bins, so the update axis is true."""
    edges, out = [], []
    for b, col in zip(bins, cols):
        left, right = b["bin"] * width - 0.5, (b["bin"] + 1) * width - 0.5
        if edges and left > edges[-1]:
            out.append([np.nan] * rows)
            edges.append(left)
        elif not edges:
            edges.append(left)
        out.append(col)
        edges.append(right)
    return np.array(edges, dtype=float), np.array(out, dtype=float).T


def evolution_figure(report: dict) -> Optional[Figure]:
    """Each statistic by layer over update bins, and the run's reward and image attention."""
    bins = report["steps"]["bins"]
    names = report["head_stats"]["names"]
    if not bins:
        return None
    x = _bin_x(bins)
    width = report["steps"]["bin_width"]
    L = len(report["layers"])
    fig = Figure(figsize=(11, 2.6 * (len(names) + 1)), layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(len(names) + 1, 1, i + 1)
        cols = [b["heads"].get(name, {}).get("by_layer") or [np.nan] * L for b in bins]
        edges, grid = _bin_columns(bins, width, cols, L)
        mesh = ax.pcolormesh(edges, np.arange(L + 1) - 0.5, np.ma.masked_invalid(grid), cmap="viridis")
        ax.invert_yaxis()
        ax.set_title(f"{name} by layer (mean over heads) per bin of {width} update(s)", fontsize=10)
        ax.set_xlabel("update")
        ax.set_ylabel("layer")
        fig.colorbar(mesh, ax=ax, label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    edges, _ = _bin_columns(bins, width, [[np.nan]] * len(bins), 1)
    span = (edges[0], edges[-1])
    ax = fig.add_subplot(len(names) + 1, 1, len(names) + 1)
    series = [("reward mean", [b["training"]["reward_mean"] for b in bins], "#1f5fa8"),
              ("image share, heads", [b["heads"].get("vision", {}).get("mean") for b in bins], TYPE_COLOURS["vision"]),
              ("image share, decode row", [b["influence_decode"]["image"] for b in bins], "#b5452a")]
    for name, ys, colour in series:
        ys = np.array([np.nan if y is None else y for y in ys], dtype=float)
        if np.isfinite(ys).any():
            ax.plot(x, ys, marker="o", ms=3, label=name, color=colour)
    ax.set_title("does attention to the image grow as the policy learns?", fontsize=10)
    ax.set_xlabel("update")
    ax.set_ylabel("mean per bin")
    ax.set_xlim(*span)  # the same update axis as the heatmaps above
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return fig


def matrix_figure(report: dict, matrix, types: list, tokens: list) -> Optional[Figure]:
    """The newest recorded prompt attention matrix, with image/text/special marks on both axes."""
    if matrix is None:
        return None
    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0]
    shown = np.ma.masked_where(np.triu(np.ones_like(m, dtype=bool), 1), m)
    fig = Figure(figsize=(8.5, 7.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="magma", interpolation="nearest", norm=mcolors.PowerNorm(0.5, vmin=0.0),
                   extent=(-0.5, k - 0.5, k - 0.5, -0.5))
    fig.colorbar(im, ax=ax, label="attention weight (square-root scale)", shrink=0.8)
    band = max(1.0, k / 40)
    for j, t in enumerate(types):
        colour = TYPE_COLOURS.get(t, TYPE_COLOURS["text"])
        ax.add_patch(Rectangle((j - 0.5, -0.5 - 1.4 * band), 1, band, color=colour, clip_on=False, lw=0))
        ax.add_patch(Rectangle((-0.5 - 1.4 * band, j - 0.5), band, 1, color=colour, clip_on=False, lw=0))
    ax.set_xlim(-0.5 - 1.5 * band, k - 0.5)
    ax.set_ylim(k - 0.5, -0.5 - 1.5 * band)
    if k <= MAX_LABELLED and len(tokens) == k:
        ticks = list(range(k))
        ax.set_xticks(ticks, [label(t) for t in tokens], rotation=90, fontsize=7, parse_math=False)
        ax.set_yticks(ticks, [label(t) for t in tokens], fontsize=7, parse_math=False)
        for tick, t in zip(ax.get_xticklabels() + ax.get_yticklabels(), list(types) * 2):
            tick.set_color(TYPE_COLOURS.get(t, TYPE_COLOURS["text"]))
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
    last = report["matrix"]["last"]
    layer = "mean over layers" if last["layer"] is None else f"layer {last['layer']}"
    head = "mean over heads" if last["head"] is None else f"head {last['head']}"
    when = f"update {last['update']}" if last["update"] is not None else "after the last update"
    pool = f", {last['pool']} tokens per cell" if last["pool"] > 1 else ""
    ax.set_title(f"prompt attention at prefill, {layer}, {head}, {when}{pool}", fontsize=10)
    ax.legend(handles=[Patch(color=c, label=t) for t, c in TYPE_COLOURS.items()], loc="upper right",
              bbox_to_anchor=(1.0, 0.9), fontsize=8, title="key type", title_fontsize=8)
    return fig


def influence_figure(report: dict) -> Optional[Figure]:
    """Where attention mass goes: image / prompt text / generated, by token type, per token."""
    infl = report["token_influence"]
    rows, mat = infl["rows"], infl["matrix"]
    have_rows = any(rows[ph]["events"] for ph in rows)
    if not have_rows and not mat["events"]:
        return None
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 3, 1)
    labels, values, cols = [], [], []
    for ph in ("decode", "prefill"):
        for part, v in rows[ph].items():
            if part != "events" and v is not None:
                labels.append(f"{ph}\n{part.replace('_', ' ')}")
                values.append(v)
                cols.append(ROW_PARTS[part])
    ax.bar(range(len(values)), values, color=cols)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("mean share of the row's mass")
    ax.set_title(f"newest-query rows ({rows['decode']['events']} decode, {rows['prefill']['events']} prefill)",
                 fontsize=10)
    ax = fig.add_subplot(1, 3, 2)
    types = list(TYPE_COLOURS)
    share = [mat["share"][t] or 0.0 for t in types]
    per_tok = [mat["per_token"][t] or 0.0 for t in types]
    xs = np.arange(len(types))
    ax.bar(xs - 0.2, share, 0.4, color=[TYPE_COLOURS[t] for t in types], label="share of all mass")
    ax.bar(xs + 0.2, per_tok, 0.4, color=[TYPE_COLOURS[t] for t in types], alpha=0.5, hatch="//",
           label="per token of that type")
    ax.set_xticks(xs, types)
    ax.set_ylabel("mean over matrix events")
    ax.set_title(f"prompt matrix: mass received by token type ({mat['events']} matrices)", fontsize=10)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 3, 3)
    top = mat["last_top_tokens"][:20]
    ax.barh(range(len(top)), [t["influence"] for t in top], color=[TYPE_COLOURS[t["type"]] for t in top])
    ax.set_yticks(range(len(top)), [f"{label(t['token'])} #{t['index']}" for t in top], fontsize=7, parse_math=False)
    ax.invert_yaxis()
    ax.set_xlabel("mean attention received (newest matrix)")
    ax.set_title("most attended prompt tokens", fontsize=10)
    return fig


def telemetry_figure(report: dict) -> Optional[Figure]:
    """Per-update training numbers: reward, KL, policy and next-token entropy, credit size."""
    bins = report["steps"]["bins"]
    if not bins:
        return None
    x = _bin_x(bins)
    per_token = report["telemetry"]["per_token"]["group_events"] > 0
    fig = Figure(figsize=(11, 6.8 if per_token else 3.8), layout="constrained")
    grid = fig.add_gridspec(2 if per_token else 1, 10)
    panels = [("reward and KL to the reference policy",
               [("reward mean", lambda b: b["training"]["reward_mean"]), ("KL to reference", lambda b: b["training"]["kl"])],
               [], "mean per bin"),
              ("entropy (nats) and per-token credit",
               [("policy entropy", lambda b: b["training"]["policy_entropy"]),
                ("next-token entropy (decode)", lambda b: b["next_token_entropy"]["decode"])],
               [("|credit| mean (right axis)", lambda b: b["credit"]["abs_mean"])], "entropy, nats")]
    for i, (title, left, right, ylabel) in enumerate(panels):
        ax = fig.add_subplot(grid[0, 5 * i:5 * i + 5])
        twin = ax.twinx() if right else None
        colours = iter(("#1f5fa8", "#e8812a", "#3c8d5a"))
        for target, series in ((ax, left), (twin, right)):
            for name, pick in series:
                ys = np.array([np.nan if pick(b) is None else pick(b) for b in bins], dtype=float)
                if np.isfinite(ys).any():
                    target.plot(x, ys, marker="o", ms=3, label=name, color=next(colours))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("update")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if twin is not None:
            twin.set_ylabel("|credit| mean")
            h2, l2 = twin.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:  # below the axes: the lines fill the plot area
            ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    if per_token:
        for j, name in enumerate(GROUP_METRICS):
            ax = fig.add_subplot(grid[1, 2 * j:2 * j + 2])
            ys = np.array([np.nan if b["per_token"][name] is None else b["per_token"][name] for b in bins], dtype=float)
            ax.plot(x, ys, marker="o", ms=2, color="#1f5fa8")
            ax.set_title(f"per-token {name}", fontsize=9)
            ax.set_xlabel("update", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("mean over tokens", fontsize=8)
    return fig


CAPTIONS = {
    "heads": "Mean of each per-head statistic over every recorded event (prefill and decode).",
    "evolution": "The statistics by layer over training updates, and image attention beside the reward.",
    "matrix": "The newest prompt attention matrix in the log; image tokens marked orange on both axes.",
    "influence": "Where the attention mass goes: image, prompt text and generated tokens; by token type.",
    "telemetry": "Reward, KL, entropies and credit over updates; per-token means from the rollout groups.",
}


def write_all(report: dict, analysis, out: str, write: Callable[[str, bytes], None]) -> tuple:
    """Draw every figure the report has data for: ({name: (file name, caption, png bytes)},
    [figures that could not be drawn, with why])."""
    m = analysis.last_matrix
    figs = {
        "heads": lambda: heads_figure(report),
        "evolution": lambda: evolution_figure(report),
        "matrix": lambda: matrix_figure(report, m.matrix, m.token_types, m.key_tokens) if m is not None else None,
        "influence": lambda: influence_figure(report),
        "telemetry": lambda: telemetry_figure(report),
    }
    done, failed = {}, []
    for name, make in figs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. glyphs missing for untrusted token text
                fig = make()
                data = _png(fig) if fig is not None else None
        except (ValueError, OverflowError, FloatingPointError) as exc:  # e.g. values too large to scale an axis
            failed.append(f"{name} ({exc})")
            continue
        if data is not None:
            write(os.path.join(out, f"{name}.png"), data)
            done[name] = (f"{name}.png", CAPTIONS[name], data)
    return done, failed
