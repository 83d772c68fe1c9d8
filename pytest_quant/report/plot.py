"""The perplexity-vs-memory plot: one panel per model, one labelled point per recipe.

matplotlib (extra ``report``) is imported only when a plot is drawn, through the Agg canvas directly
(never pyplot), so the backend of the process running the tests is left alone.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_write
from ..hardware import is_cuda
from ..units import MIB
from .documents import PLOT_TITLE
from .rows import Rows

INSTALL_HINT = "pip install 'pytest-quant[report]'"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def plottable(rows: Rows) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows with both a memory figure and a perplexity; the pair ids of the others."""
    ok, left_out = [], []
    for pair, row in rows.pairs.items():
        if _number(row.get("vram_resident_bytes")) is not None and _number(row.get("perplexity")) is not None:
            ok.append(row)
        else:
            left_out.append(pair)
    return ok, left_out


def figure(rows: Rows):
    """Perplexity (y) against memory in MiB (x), one panel per model; marker area scaled by decode
    tokens/s, each point labelled with its recipe, the reference a black star. None if nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    points, left_out = plottable(rows)
    if not points:
        return None
    models = list(dict.fromkeys(r["model"] for r in points))
    fig = Figure(figsize=(4.2 + 4.6 * len(models), 5.4), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    speeds = [s for r in points if (s := _number(r.get("decode_tokens_per_s"))) is not None]
    fastest = max(speeds, default=0.0)

    def area(row) -> float:  # points^2; area, not radius, is proportional to tokens/s
        speed = _number(row.get("decode_tokens_per_s"))
        return 70.0 if speed is None or fastest <= 0 else 30.0 + 570.0 * speed / fastest

    colour = {"pass": "#1f77b4", "FAIL": "#d62728"}
    for ax, model in zip(axes, models):
        mine = [r for r in points if r["model"] == model]
        devices = sorted({r.get("device", "") for r in mine})
        on_gpu = any(is_cuda(d) for d in devices)
        for r in mine:
            x, y = float(r["vram_resident_bytes"]) / MIB, float(r["perplexity"])
            measured_speed = _number(r.get("decode_tokens_per_s")) is not None
            if r.get("recipe") == "reference":
                ax.scatter([x], [y], s=area(r) * 1.6, marker="*", c="black", edgecolors="black", zorder=4)
                ax.axhline(y, color="0.45", linestyle="--", linewidth=1, zorder=1)
            else:
                c = colour.get(r.get("result", "pass"), colour["pass"])
                ax.scatter([x], [y], s=area(r), marker="o", zorder=3, linewidths=1.5,
                           c=c if measured_speed else "none", edgecolors=c, alpha=0.75 if measured_speed else 1)
        hardware = ", ".join(sorted({r["hardware"] for r in mine if r.get("hardware")}))
        tokens = ", ".join(sorted({str(r["eval_tokens"]) for r in mine if r.get("eval_tokens")}))
        where = ", ".join(devices) + (f" ({hardware})" if hardware else "")
        ax.set_title(f"{model} on {where}" + (f"\nperplexity over {tokens} eval tokens" if tokens else ""), fontsize=10)
        ax.set_xlabel("VRAM resident (MiB)" if on_gpu else "memory footprint on CPU (MiB)")
        ax.set_ylabel("perplexity (lower is better)")
        ax.ticklabel_format(axis="both", style="plain", useOffset=False)
        ax.grid(True, color="0.9", zorder=0)
        ax.set_axisbelow(True)
        ax.margins(x=0.25, y=0.25)
        ax.set_xlim(left=0)  # memory from zero, so "half the reference's" looks like half

    handles = [Line2D([], [], marker="*", color="black", linestyle="--", linewidth=1, markersize=12,
                      label="reference (dashed: its perplexity)")]
    results = {r.get("result", "pass") for r in points if r.get("recipe") != "reference"}
    handles += [Line2D([], [], marker="o", linestyle="", color=colour[k], markersize=8, label=f"recipe: {k.lower()}")
                for k in ("pass", "FAIL") if k in results]
    if speeds:
        for speed in sorted({min(speeds), max(speeds)}):
            handles.append(Line2D([], [], marker="o", linestyle="", color="0.6", markersize=math.sqrt(30.0 + 570.0 * speed / fastest),
                                  label=f"{speed:.3g} decode tok/s"))
    if any(_number(r.get("decode_tokens_per_s")) is None for r in points):
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="0.4", markersize=8,
                              label="tok/s not measured"))
    fig.legend(handles=handles, loc="outside right upper", title="marker area ∝ decode tok/s", fontsize=9,
               title_fontsize=9, labelspacing=1.2, borderpad=0.9, frameon=False)
    fig.suptitle(PLOT_TITLE, fontsize=13)
    if left_out:
        fig.supxlabel(f"not plotted (memory or perplexity not measured): {', '.join(left_out)}",
                      fontsize=8, color="0.35")  # a figure label, so the layout makes room for it
    fig.draw_without_rendering()  # lay out once, then freeze it so the labels can be placed in pixels
    fig.set_layout_engine("none")
    for ax, model in zip(axes, models):
        _label_points(fig, ax, [r for r in points if r["model"] == model], area)
    return fig


# Label offsets in units of (marker radius + a gap): beside the marker first, then further out.
_CANDIDATES = tuple((dx * k, dy * k, ha, va) for k in (1, 2.2, 3.6) for dx, dy, ha, va in (
    (1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"), (-1, -1, "right", "top"),
    (1.4, 0, "left", "center"), (-1.4, 0, "right", "center"), (0, 1.4, "center", "bottom"), (0, -1.4, "center", "top")))


def _label_points(fig, ax, rows: list[dict[str, Any]], area) -> None:
    """Label each point with its recipe where the label overlaps no other label, marker or the frame, and is
    nearer its own marker than any other; a thin leader line joins them."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    centres = [(ax.transData.transform((float(r["vram_resident_bytes"]) / MIB, float(r["perplexity"]))),
                math.sqrt(area(r) * (1.6 if r.get("recipe") == "reference" else 1)) / 2 * px_per_pt) for r in rows]
    markers = [(c[0] - rad, c[1] - rad, c[0] + rad, c[1] + rad) for c, rad in centres]
    placed: list[tuple[float, float, float, float]] = []

    def overlap(a, b) -> float:
        w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    order = sorted(range(len(rows)), key=lambda i: (centres[i][0][0], centres[i][0][1]))
    for i in order:
        row, ((cx, cy), rad) = rows[i], centres[i]
        gap = rad / px_per_pt + 3  # points from the centre to the label's nearest edge
        best = None
        for dx, dy, ha, va in _CANDIDATES:
            text = ax.annotate(row.get("recipe", "?"), (float(row["vram_resident_bytes"]) / MIB, float(row["perplexity"])),
                               xytext=(dx * gap, dy * gap), textcoords="offset points", ha=ha, va=va, fontsize=9,
                               fontweight="bold" if row.get("recipe") == "reference" else "normal", zorder=5,
                               arrowprops=dict(arrowstyle="-", color="0.55", linewidth=0.7, shrinkA=1,
                                               shrinkB=rad / px_per_pt))
            text.update_positions(renderer)
            e = Text.get_window_extent(text, renderer)  # the words alone, not the leader line
            box = (e.x0 - 2, e.y0 - 2, e.x1 + 2, e.y1 + 2)
            outside = max(0, frame.x0 - box[0]) + max(0, box[2] - frame.x1) + max(0, frame.y0 - box[1]) + max(0, box[3] - frame.y1)
            mid = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            own = math.dist(mid, (cx, cy)) - rad
            misleading = sum(1 for j, ((ox, oy), orad) in enumerate(centres)
                             if j != i and math.dist(mid, (ox, oy)) - orad < own - 1)
            cost = (outside * 1000 + sum(overlap(box, b) for b in placed) * 10 + sum(overlap(box, m) for m in markers)
                    + misleading * 500)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        placed.append(best[2])


@dataclass(frozen=True)
class Plot:
    png: Path | None = None
    svg: str | None = None  # inline SVG, for the HTML page
    note: str | None = None  # why there is no plot, when there is none


def render_plot(rows: Rows, png: Path, svg: bool = False) -> Plot:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return Plot(note=f"no plot: matplotlib is not installed; the plot needs {INSTALL_HINT}")
    from matplotlib import rc_context

    fig = figure(rows)
    if fig is None:
        return Plot(note="no plot: no model x recipe has both memory and perplexity measured "
                         "(the vram_budget and perplexity_delta markers measure them)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": f"pytest-quant {__version__}"})
    atomic_write(png, buffer.getvalue())
    inline = None
    if svg:
        buffer = io.StringIO()
        with rc_context({"svg.fonttype": "none", "svg.hashsalt": "pytest-quant"}):  # text stays text
            fig.savefig(buffer, format="svg", metadata=dict.fromkeys(("Date", "Creator", "Format", "Type")))
        inline = buffer.getvalue()
        inline = inline[inline.index("<svg"):]
    return Plot(png=png, svg=inline)
