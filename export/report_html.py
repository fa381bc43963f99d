"""The model report drawn as one self-contained HTML page: plots as inline SVG made with matplotlib,
tables as HTML, no script and nothing loaded from the network (it opens from a file, offline, and
the service serves it as it is)."""

from __future__ import annotations

import html
import io
import re
from typing import Any

from bertserve.report import Plot, Report, Section, Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2a44; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; } header p { margin: 0; opacity: .8; font-size: 13px; }
main { padding: 16px 32px 48px; max-width: 1400px; }
nav a { margin-right: 14px; font-size: 14px; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 8px 20px 16px; margin: 16px 0; }
h2 { font-size: 18px; border-bottom: 1px solid #e4e7ec; padding-bottom: 6px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.warning { background: #fff4d6; border-left: 4px solid #e0a100; padding: 8px 12px; margin: 8px 0; font-size: 14px; }
.note { color: #4a5568; font-size: 13px; margin: 6px 0; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure.plot { margin: 0; flex: 1 1 560px; max-width: 680px; }
figure.plot svg { width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 8px; }
th, td { border: 1px solid #e1e4ea; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary td:first-child { font-weight: 600; background: #f7f8fa; }
"""
MAX_HEATMAP_LABELS = 30


def render(report: Report) -> str:
    """The page, as one string."""
    from matplotlib import rc_context

    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{_e(report.name)} — bertserve model report</title><style>{STYLE}</style></head><body>",
             f"<header><h1>{_e(report.name)}</h1><p>bertserve model report · {_e(report.task)} · "
             f"{_e(report.created_at)}</p></header><main>"]
    parts.append("<nav>" + "".join(f"<a href=\"#s{i}\">{_e(s.title)}</a>" for i, s in enumerate(report.sections))
                 + "</nav>")
    parts.append("<section><h2>Summary</h2><table class=\"summary\">"
                 + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in report.summary) + "</table>")
    parts.extend(f"<div class=\"warning\">{_e(w)}</div>" for w in report.warnings)
    if not report.warnings:
        parts.append("<p class=\"note\">No warnings: the curves show none of the usual training mistakes.</p>")
    parts.append("</section>")
    with rc_context({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                     "axes.spines.right": False, "svg.hashsalt": "bertserve"}):
        for i, section in enumerate(report.sections):
            parts.append(_section(i, section))
    parts.append("</main></body></html>\n")
    return "".join(parts)


def _section(index: int, section: Section) -> str:
    out = [f"<section id=\"s{index}\"><h2>{_e(section.title)}</h2>"]
    out.extend(f"<div class=\"warning\">{_e(w)}</div>" for w in section.warnings)
    out.extend(f"<p class=\"note\">{_e(n)}</p>" for n in section.notes)
    plots = [b for b in section.blocks if isinstance(b, Plot)]
    if plots:
        out.append("<div class=\"plots\">" + "".join(_figure(p) for p in plots) + "</div>")
    out.extend(_table(b) for b in section.blocks if isinstance(b, Table))
    out.append("</section>")
    return "".join(out)


def _figure(plot: Plot) -> str:
    points = sum(len(s.y) for s in plot.series) + sum(len(r) for r in plot.matrix)
    if not points:
        return f"<figure class=\"plot\" data-points=\"0\"><p class=\"note\">{_e(plot.title)}: no data</p></figure>"
    return (f"<figure class=\"plot\" data-points=\"{points}\" aria-label=\"{_e(plot.title)}\">"
            f"{_svg(plot)}</figure>")


def _svg(plot: Plot) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(plot.title, fontsize=10, loc="left")
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    if plot.kind == "heatmap":
        _heatmap(fig, ax, plot)
    elif plot.kind == "bar":
        width = 0.8 / max(1, len(plot.series))
        for k, s in enumerate(plot.series):
            offset = (k - (len(plot.series) - 1) / 2) * width
            bars = ax.bar([x + offset for x in s.x], s.y, width, label=s.name)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(range(len(plot.categories)), plot.categories,
                      rotation=30 if sum(len(c) for c in plot.categories) > 60 else 0, ha="right"
                      if sum(len(c) for c in plot.categories) > 60 else "center")
    else:
        for s in plot.series:
            if plot.kind == "scatter":
                ax.scatter(s.x, s.y, s=12, alpha=0.6, label=s.name, linewidths=0)
            else:
                ax.plot(s.x, s.y, label=s.name, marker="o" if len(s.x) <= 40 else None, markersize=3)
        if plot.diagonal:
            values = [v for s in plot.series for v in s.x + s.y]
            low, high = min(values), max(values)
            ax.plot([low, high], [low, high], "--", color="#888", linewidth=0.8, label="y = x")
        if plot.logy:
            ax.set_yscale("log")
    for label, y in plot.levels:
        ax.axhline(y, linestyle="--", color="#c0392b", linewidth=0.9, label=f"{label} ({y:g})")
    for label, x in plot.marks:
        if x is not None:
            ax.axvline(x, linestyle="--", color="#c0392b", linewidth=0.9, label=f"{label} ({x:g})")
    if plot.kind != "heatmap" and (len(plot.series) > 1 or plot.marks or plot.levels or plot.diagonal):
        ax.legend(fontsize=7, frameon=False)
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    return re.sub(r"^.*?(<svg)", r"\1", svg, count=1, flags=re.S)  # no XML prologue or doctype inline


def _heatmap(fig: Any, ax: Any, plot: Plot) -> None:
    import numpy as np

    matrix = np.asarray(plot.matrix, dtype=float)
    image = ax.imshow(matrix, cmap="Blues", aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.8)
    if len(plot.categories) <= MAX_HEATMAP_LABELS:
        ax.set_xticks(range(len(plot.categories)), plot.categories, rotation=45 if len(plot.categories) > 4 else 0,
                      ha="right" if len(plot.categories) > 4 else "center")
        ax.set_yticks(range(len(plot.rows)), plot.rows)
    if matrix.size <= 100:
        top = matrix.max() or 1.0
        for (r, c), value in np.ndenumerate(matrix):
            ax.text(c, r, f"{value:g}", ha="center", va="center", fontsize=8,
                    color="white" if value > top / 2 else "#1d2330")


def _table(table: Table) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.rows)
    note = f"<p class=\"note\">{_e(table.note)}</p>" if table.note else ""
    empty = "" if table.rows or table.note else "<p class=\"note\">none</p>"
    return f"<h3>{_e(table.title)}</h3><table><tr>{head}</tr>{body}</table>{empty}{note}"


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"<td class=\"num\">{_e(f'{value:g}' if isinstance(value, float) else value)}</td>"
    return f"<td>{_e(value)}</td>"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
