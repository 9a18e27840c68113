"""index.html: one self-contained page (figures as base64 data URIs, no scripts, no links out),
so it opens from a cluster's shared disk or an e-mail attachment. Every text from the log is
HTML-escaped."""
from __future__ import annotations

import base64
import html

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}figure{margin:1em 0}img{max-width:100%}
figcaption{color:#555;font-size:.9em}dt{font-weight:600}dd{margin:0 0 .5em 1.5em;color:#444}
.note{color:#a33}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return _e(v)


def _table(header: list, rows: list) -> str:
    head = "".join(f"<th class=l>{_e(h)}</th>" if i == 0 else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td class=l>{_e(c)}</td>" if i == 0 else f"<td>{_num(c)}</td>"
                                     for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _run_section(r: dict) -> str:
    run = r["run"]
    shape = run["shape"] or {}
    cap = run["capture"]
    src = r["source"]
    runs = src.get("runs", 1)
    rows = [("runs in the log", runs if runs == 1 else
             f"{runs} (appended by --record): this page is of the last, from line {src.get('run_first_line')}"),
            ("model", run["model"]), ("layers \u00d7 heads", f"{shape.get('num_layers')} \u00d7 {shape.get('num_heads')}"),
            ("updates", f"{run['updates']['count']} ({run['updates']['first']}..{run['updates']['last']})"),
            ("events", r["source"]["events"]), ("log bytes", run["bytes"]["file"]),
            ("garbage / truncated lines", f"{r['source']['garbage_lines']} / {r['source']['truncated_lines']}"),
            ("events with head statistics", cap["head_stat_events"]),
            ("events with an attention row", cap["attention_row_events"]),
            ("attention matrices", cap["matrix_events"]),
            ("decode-step coverage", cap["step_coverage"]), ("sequence-row coverage", cap["row_coverage"])]
    out = _table(["", "value"], rows)
    ev = run["events"]
    out += "<p>" + ", ".join(f"{_e(k)}: {_e(v)}" for k, v in ev.items()) + "</p>"
    return out


def _stats_section(r: dict) -> str:
    names = r["head_stats"]["names"]
    if not r["layers"]:
        return "<p>No per-head attention statistics in this log.</p>"
    rows = [[f"layer {layer['layer']}"] + [layer["mean_over_heads"][n] for n in names] for layer in r["layers"]]
    out = "<p>Mean over heads of each layer:</p>" + _table(["layer"] + names, rows)
    rs = r["rows"]
    stats = ["events", "entropy", "focus", "density", "diagonal", "sink", "vision"]
    out += "<p>Whole attention rows (mean over layers and heads) and the prompt matrices:</p>"
    mrow = r["matrix"]["means"] or {}
    table_rows = [[ph] + [rs[ph][s] for s in stats] for ph in ("prefill", "decode")]
    table_rows.append(["matrix rows", r["matrix"]["query_rows"]] + [mrow.get(s) for s in stats[1:]])
    return out + _table(["rows"] + stats, table_rows)


def _trend_section(r: dict) -> str:
    rows = []
    for name, t in r["steps"]["image_attention_trend"].items():
        if t is not None:
            rows.append([name.replace("_", " "), t["bins"], t["first_quarter"], t["last_quarter"], t["slope_per_update"]])
    if not rows:
        return "<p>No attention over updates in this log.</p>"
    return _table(["image attention", "bins", "first quarter", "last quarter", "slope per update"], rows)


def render(report: dict, figures: dict, out_dir: str, note: str = "") -> str:
    """The page for `report` with `figures` ({name: (file, caption, png bytes)}) embedded."""
    r = report
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>vlmrl analysis: {_e(r['run']['model'])}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>Attention analysis of {_e(r['source']['path'])}</h1>"]
    if note:
        parts.append(f"<p class=note>{_e(note)}</p>")
    parts += ["<h2>Run</h2>", _run_section(r), "<h2>Statistics</h2>", _stats_section(r),
              "<h2>Image attention over training</h2>", _trend_section(r), "<h2>Figures</h2>"]
    if not figures:
        parts.append("<p>No figures.</p>")
    for name, (fname, caption, data) in figures.items():
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(f"<figure><img alt='{_e(name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{_e(caption)} ({_e(fname)})</figcaption></figure>")
    parts.append("<h2>Definitions</h2><dl>")
    for k, v in r["definitions"].items():
        parts.append(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>")
    for k, v in r["not_recorded"].items():
        parts.append(f"<dt>{_e(k)}: not recorded</dt><dd>{_e(v)}</dd>")
    parts.append(f"<dt>parameters</dt><dd>{_e(r['parameters'])}</dd></dl>")
    parts.append("<p>All numbers are in report.json beside this page.</p></body></html>")
    return "\n".join(parts)
