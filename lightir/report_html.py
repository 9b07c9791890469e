"""The run as one page to look at (``--report-html``) or as Markdown for CI logs (``--report-md``).

The HTML page is one self-contained file that opens offline: no script, no stylesheet or
font fetched, the plots inlined as SVG images. It holds

* the per-pass table of ``lightir-opt`` and the lines under it (no-ops and their reasons,
  rollbacks, what was skipped, the metric on held-out samples);
* an op-type table, input against result;
* a per-layer table: every Conv / Gemm / MatMul of the input with its MACs and parameters
  before and after, what was done to it (channels pruned, factorized into a chain, int8
  weights) and, where ``compress`` measured it, its sensitivity (output error and metric
  drop of its strongest level alone);
* plots, drawn with matplotlib (``pip install 'lightir[report]'``; without it the page says
  so and keeps the tables): time per pass, MACs against agreement with the input after each
  pass, each search's explored front (metric drop against measured cost, the budget and the
  chosen point marked), and per-layer sensitivity bars.

Markdown carries the same tables and lines, without plots.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

from lightir.report import Report, _si, pass_table, summary_lines

PLOT_HINT = "plots need matplotlib: pip install 'lightir[report]'"
SENSITIVITY_BARS = 30  # the most sensitive units a bar chart shows
# Each plot has colours of its own, so a screenshot shows which ones rendered (the test).
COLORS = {
    "time": ("#1f77b4", "#ff7f0e"),
    "cost": ("#2ca02c",),
    "front": ("#17becf", "#d62728"),
    "sensitivity": ("#8c564b", "#e377c2", "#9467bd"),
}


# --------------------------------------------------------------------------------- tables
def op_table(report: Report) -> list[list[str]]:
    """Op types, input against result (header first); empty without a profile."""
    before = report.profile.get("before", {}).get("ops")
    if before is None:
        return []
    after = report.profile.get("after", {}).get("ops", before)
    rows = [["op type", "input", "result", "change"]]
    for op in sorted(set(before) | set(after), key=lambda o: (-before.get(o, 0), o)):
        b, a = before.get(op, 0), after.get(op, 0)
        rows.append([op, str(b), str(a), "" if a == b else f"{a - b:+d}"])
    return rows


def _shape(layer: dict) -> str:
    return "x".join(str(d) for d in layer["shape"])


def _change(layer: dict, after: dict | None, chain: list[dict]) -> str:
    """What happened to one input layer, read off the result."""
    if after is None and not chain:
        return "removed or merged"
    if chain:
        pieces = chain + ([after] if after is not None else [])
        ops = ", ".join(f"{c['op']} {_shape(c)}" for c in pieces)
        return f"factorized into {len(pieces)}: {ops}"
    parts = []
    if after["shape"] != layer["shape"]:
        parts.append(f"weight {_shape(layer)} -> {_shape(after)}")
    if after["dtype"] != layer["dtype"]:
        parts.append(f"{after['dtype']} weights")
    return "; ".join(parts)


def sensitivity_by_layer(report: Report) -> dict[str, dict]:
    """Per layer, the most sensitive level ``compress`` measured on it alone."""
    worst: dict[str, dict] = {}
    for record in report.records:
        for row in record.stats.get("sensitivity", ()):
            for name in row.get("layers", ()):
                seen = worst.get(name)
                if seen is None or row["output_error"] > seen["output_error"]:
                    worst[name] = row
    return worst


def pass_figures(report: Report) -> dict[str, list[str]]:
    """Per layer, what passes measured on it (a low-rank pass's rank and errors)."""
    figures: dict[str, list[str]] = {}
    for record in report.records:
        layers = record.stats.get("layers")
        if record.status != "changed" or not isinstance(layers, dict):
            continue
        for name, entry in layers.items():
            if not isinstance(entry, dict):
                continue
            parts = [
                f"{key.replace('_', ' ')} {entry[key]:g}"
                for key in ("rank", "weight_error", "output_error")
                if isinstance(entry.get(key), int | float)
            ]
            if parts:
                figures.setdefault(name, []).append(
                    f"#{record.index} {record.name}: " + ", ".join(parts)
                )
    return figures


def layer_table(report: Report) -> list[list[str]]:
    """One row per linear layer of the input (header first); empty without a profile."""
    before = report.profile.get("before", {}).get("layers")
    if before is None:
        return []
    after_layers = report.profile.get("after", {}).get("layers", before)
    after = {layer["name"]: layer for layer in after_layers}
    known = {layer["name"] for layer in before}
    sensitivity = sensitivity_by_layer(report)
    figures = pass_figures(report)
    rows = [
        [
            "layer",
            "op",
            "MACs in",
            "MACs out",
            "params in",
            "params out",
            "what was done",
            "measured by the pass",
            "sensitivity (strongest level alone)",
        ]
    ]
    for layer in before:
        name = layer["name"]
        kept = after.get(name)
        # Factorization names its chain after the layer (lowrank.driver: NAME_svd0, ...).
        chain = [
            a for a in after_layers if a["name"].startswith(f"{name}_") and a["name"] not in known
        ]
        # A chain may end in a node that kept the layer's name (svd does): count both.
        now = ([kept] if kept is not None else []) + chain
        macs = sum(a["macs"] for a in now)
        params = sum(a["params"] for a in now)
        row = sensitivity.get(name)
        sense = ""
        if row is not None:
            sense = f"{row['level']}: output error {row['output_error']:.2e}"
            drop = row.get("metric_drop")
            if drop is not None and not (isinstance(drop, float) and math.isnan(drop)):
                sense += f", metric drop {drop:.4f}"
        rows.append(
            [
                name,
                layer["op"],
                _si(layer["macs"]),
                _si(macs),
                _si(layer["params"]),
                _si(params),
                _change(layer, kept, chain),
                "; ".join(figures.get(name, [])),
                sense,
            ]
        )
    return rows


def strength_lines(report: Report) -> list[str]:
    """Per pass that searched its strength: the value chosen and what each trial gave."""
    lines = []
    for record in report.records:
        searched = record.stats.get("strength")
        if not searched:
            continue
        tried = "; ".join(f"{k}: {v}" for k, v in searched.get("tried", {}).items())
        lines.append(
            f"#{record.index} {record.name}: {searched['option']}={searched['chosen']} "
            f"(tried {tried})"
        )
    return lines


# ---------------------------------------------------------------------------------- plots
def _svg(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(8.0, height), layout="constrained")


def _time_plot(report: Report):
    records = report.records
    if not records:
        return None
    figure = _figure(0.5 + 0.35 * len(records))
    axes = figure.subplots()
    labels = [f"#{r.index} {r.name}" for r in records][::-1]
    run = [r.seconds for r in records][::-1]
    verify = [r.verify_seconds for r in records][::-1]
    axes.barh(labels, run, color=COLORS["time"][0], label="pass")
    axes.barh(labels, verify, left=run, color=COLORS["time"][1], label="verification")
    axes.set_xlabel("seconds")
    axes.set_title("Time per pass")
    axes.legend(loc="lower right")
    return figure


def _cost_plot(report: Report):
    points = [("input", report.original.macs, 1.0)]
    for record in report.records:
        if record.status != "changed" or not record.vs_original:
            continue
        cosine = min(m.cosine for m in record.vs_original)
        points.append((f"#{record.index} {record.name}", record.cost.macs, cosine))
    if len(points) < 2:
        return None
    figure = _figure(3.6)
    axes = figure.subplots()
    base = report.original.macs or 1
    xs = [p[1] / base for p in points]
    ys = [p[2] for p in points]
    axes.plot(xs, ys, "-o", color=COLORS["cost"][0])
    for (label, _, _), x, y in zip(points, xs, ys):
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xlabel("MACs, share of the input's")
    axes.set_ylabel("cosine with the input (worst output)")
    axes.set_title("Cost against agreement after each pass")
    axes.invert_xaxis()
    return figure


def _front_plot(record) -> Any:
    rows = record.stats.get("front") or []
    if not rows:
        return None
    key = next((k for k in rows[0] if k.startswith("measured_")), None)
    if key is None:
        return None
    unit = key.removeprefix("measured_")
    within = [r for r in rows if r["meets"] and r["confirmed"]]
    outside = [r for r in rows if not (r["meets"] and r["confirmed"])]
    figure = _figure(3.8)
    axes = figure.subplots()
    if outside:
        axes.scatter(
            [r[key] for r in outside],
            [r["drop"] for r in outside],
            color=COLORS["front"][1],
            marker="x",
            label="over budget",
        )
    if within:
        axes.scatter(
            [r[key] for r in within],
            [r["drop"] for r in within],
            color=COLORS["front"][0],
            label="within budget",
        )
        best = min(within, key=lambda r: r[key])
        axes.scatter(
            [best[key]],
            [best["drop"]],
            s=160,
            facecolors="none",
            edgecolors="#000000",
            linewidths=2,
            label="chosen",
        )
    budget = record.stats.get("max_drop")
    if budget is not None:
        axes.axhline(budget, color="#7f7f7f", linestyle="--", label=f"budget {budget:g}")
    axes.set_xlabel(f"measured {unit}")
    axes.set_ylabel(f"{record.stats.get('metric', 'metric')} drop")
    axes.set_title(f"#{record.index} {record.name}: explored front")
    axes.legend(loc="upper right", fontsize=8)
    return figure


def _sensitivity_plot(record) -> Any:
    rows = record.stats.get("sensitivity") or []
    worst: dict[str, dict] = {}
    for row in rows:
        seen = worst.get(row["unit"])
        if seen is None or row["output_error"] > seen["output_error"]:
            worst[row["unit"]] = row
    if not worst:
        return None
    shown = sorted(worst.values(), key=lambda r: -r["output_error"])[:SENSITIVITY_BARS]
    colors = dict(zip(("prune", "lowrank", "int8"), COLORS["sensitivity"]))
    figure = _figure(0.8 + 0.28 * len(shown))
    axes = figure.subplots()
    labels = [r["unit"][:60] for r in shown][::-1]
    values = [max(r["output_error"], 1e-12) for r in shown][::-1]
    axes.barh(labels, values, color=[colors.get(r["kind"], "#7f7f7f") for r in shown][::-1])
    axes.set_xscale("log")
    axes.set_xlabel("relative squared output error, strongest level alone")
    axes.set_title(
        f"#{record.index} {record.name}: per-layer sensitivity "
        f"({len(shown)} of {len(worst)} units; brown prune, pink low-rank, purple int8)"
    )
    axes.tick_params(axis="y", labelsize=7)
    return figure


def plots(report: Report) -> list[tuple[str, str]]:
    """(title, base64 SVG) of every plot the run has data for; ImportError without matplotlib."""
    import matplotlib

    figures = [("Time per pass", _time_plot(report)), ("Cost and agreement", _cost_plot(report))]
    for record in report.records:
        figures.append((f"#{record.index} {record.name} front", _front_plot(record)))
        figures.append((f"#{record.index} {record.name} sensitivity", _sensitivity_plot(record)))
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "lightir"}):
        return [(title, _svg(figure)) for title, figure in figures if figure is not None]


# ------------------------------------------------------------------------------ rendering
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 12.5px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; } .failed { color: #c62828; }
.plot img { max-width: 100%; border: 1px solid #e0e0e0; margin: 6px 0; }
ul.notes li { margin: 2px 0; } code { background: #f4f4f4; padding: 0 3px; }
"""


def _html_table(rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    if not rows:
        return "<p>(no data)</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = []
    for row in rows[1:]:
        cells = "".join(
            f"<td{' class=num' if i in numeric else ''}>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: Report) -> str:
    """The whole page (see the module docstring)."""
    from lightir import __version__

    status = (
        '<span class="ok">ok</span>'
        if report.ok
        else f'<span class="failed">failed: {html.escape("; ".join(report.failures))}</span>'
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>lightir report: {html.escape(report.model)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>lightir {html.escape(__version__)}: {html.escape(report.model)}</h1>",
        f"<p>pipeline <code>{html.escape(report.pipeline)}</code>; {status}</p>",
        "<h2>Passes</h2>",
        _html_table(pass_table(report), numeric=set(range(4, 14))),
        '<ul class="notes">',
        *(f"<li>{html.escape(line)}</li>" for line in summary_lines(report)),
        *(f"<li>{html.escape(line)}</li>" for line in strength_lines(report)),
        "</ul>",
    ]
    try:
        drawn = plots(report)
    except ImportError:
        parts.append(f"<p><em>{html.escape(PLOT_HINT)}</em></p>")
    else:
        parts.append("<h2>Plots</h2>")
        for title, svg in drawn:
            parts.append(
                f'<div class="plot"><img alt="{html.escape(title)}" '
                f'src="data:image/svg+xml;base64,{svg}"></div>'
            )
    parts += [
        "<h2>Op types</h2>",
        _html_table(op_table(report), numeric={1, 2, 3}),
        "<h2>Layers</h2>",
        _html_table(layer_table(report), numeric={2, 3, 4, 5}),
    ]
    declines = [(r, d) for r in report.records for d in r.declines]
    if declines:
        parts.append(f"<details><summary>Declined matches ({len(declines)})</summary><ul>")
        parts += [
            f"<li>#{r.index} {html.escape(r.name)}: {html.escape(d)}</li>" for r, d in declines
        ]
        parts.append("</ul></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_table(rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["(no data)"]

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in rows[0]) + " |"]
    lines.append("|" + "---|" * len(rows[0]))
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows[1:]]
    return lines


def render_markdown(report: Report) -> str:
    """The same tables and lines as the page, as Markdown (no plots)."""
    lines = [
        f"## lightir: {report.model}",
        "",
        f"pipeline `{report.pipeline}`: " + ("ok" if report.ok else "failed"),
        "",
        *_md_table(pass_table(report)),
        "",
        *(f"- {line}" for line in summary_lines(report) + strength_lines(report)),
        "",
        "### Op types",
        "",
        *_md_table(op_table(report)),
        "",
        "### Layers",
        "",
        *_md_table(layer_table(report)),
    ]
    return "\n".join(lines) + "\n"
