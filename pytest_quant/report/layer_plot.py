"""The per-layer SQNR plot: one panel per model, one line per recipe over its decoder layers and lm_head, each
point the layer's own SQNR (the quantized layer run on the reference's input to it; ``measure.layers``), so the
layer that breaks stands out as a dip. A layer identical to the reference's (infinite SQNR) sits on the top row,
drawn hollow. From the ``quant.layer_sqnr_db`` property; matplotlib (extra ``report``) through the Agg canvas."""

from __future__ import annotations

import io
import math
from pathlib import Path

from .. import __version__
from ..atomic import atomic_write
from .properties import LAYER_SQNR
from .rows import Rows

TITLE = "Own SQNR per layer (the layer run on the reference's input; higher is better)"
UNCHANGED_ABOVE_DB = 6.0  # where the "unchanged" row sits above the highest finite SQNR


def layer_rows(rows: Rows) -> dict[str, list[tuple[str, list[str], list[float | None]]]]:
    """model -> [(recipe, layer names, own SQNR dB or None for unchanged)], for the rows that have layers."""
    out: dict[str, list] = {}
    for row in rows.pairs.values():
        layers = row.get(LAYER_SQNR)
        if isinstance(layers, dict) and layers and row.get("recipe") != "reference":
            names = list(layers)
            out.setdefault(row.get("model", "?"), []).append(
                (row.get("recipe", "?"), names, [v[0] if isinstance(v, (list, tuple)) else None for v in layers.values()]))
    return out


def layer_figure(rows: Rows):
    """The figure, or None when no recipe has per-layer figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = layer_rows(rows)
    if not models:
        return None
    fig = Figure(figsize=(4.0 + 5.0 * len(models), 5.0), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, (model, recipes) in zip(axes, models.items()):
        finite = [v for _, _, values in recipes for v in values if v is not None and math.isfinite(v)]
        top = (max(finite) if finite else 0.0) + UNCHANGED_ABOVE_DB
        names = list(dict.fromkeys(n for _, layer_names, _ in recipes for n in layer_names))
        for recipe, layer_names, values in recipes:
            x = [names.index(n) for n in layer_names]
            y = [top if v is None or not math.isfinite(v) else v for v in values]
            (line,) = ax.plot(x, y, marker="o", linewidth=1.4, markersize=5, label=recipe)
            hollow = [(xi, yi) for xi, yi, v in zip(x, y, values) if v is None or not math.isfinite(v)]
            if hollow:
                ax.scatter(*zip(*hollow), s=40, facecolors="white", edgecolors=line.get_color(), zorder=3)
        ax.axhline(top, color="0.75", linestyle=":", linewidth=1)
        ax.annotate("unchanged (identical to the reference's)", (0, top), xytext=(2, 3), textcoords="offset points",
                    fontsize=8, color="0.4")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("own SQNR (dB)")
        ax.set_title(model, fontsize=10)
        ax.grid(True, color="0.9")
        ax.set_axisbelow(True)
        ax.legend(fontsize=8, title="recipe", title_fontsize=8)
    fig.suptitle(TITLE, fontsize=12)
    return fig


def render_layer_plot(rows: Rows, png: Path) -> Path | None:
    """Write the plot as ``png``; None (nothing written) without matplotlib or per-layer figures."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    fig = layer_figure(rows)
    if fig is None:
        return None
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": f"pytest-quant {__version__}"})
    atomic_write(png, buffer.getvalue())
    return png


def layer_plot_path(report: Path) -> Path:
    return report.with_name(f"{report.stem}-layers.png")
