"""``--quant-report``: the summary table as Markdown, JSON or HTML, a perplexity-vs-VRAM plot beside it,
and the table appended to GitHub's step summary.

matplotlib (extra ``report``) is imported only when a plot is drawn, through the Agg canvas directly
(never pyplot), so the backend of the process running the tests is left alone.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import shlex
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import pytest

from . import __version__
from .options import format_bytes
from .report import COLUMNS, Rows

SUFFIXES = (".md", ".json", ".html")
INSTALL_HINT = "pip install 'pytest-quant[report]'"
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
TITLE = "pytest-quant report"
PLOT_TITLE = "Perplexity against memory, per recipe"
MIB = 2**20

_FORMAT = {key: fmt for _, key, fmt in COLUMNS}
# The terminal table's formats, under fuller titles, with the 99th-percentile KL the terminal leaves out.
REPORT_COLUMNS = (
    ("model", "model", str),
    ("recipe", "recipe", str),
    ("device", "device", str),
    ("kernel", "kernel", str),
    ("VRAM peak", "vram_peak_bytes", format_bytes),
    ("decode tok/s", "decode_tokens_per_s", _FORMAT["decode_tokens_per_s"]),
    ("% of bandwidth bound", "roofline_percent", _FORMAT["roofline_percent"]),
    ("perplexity", "perplexity", _FORMAT["perplexity"]),
    ("Δ perplexity", "delta_perplexity", _FORMAT["delta_perplexity"]),
    ("mean KL (nats)", "mean_kl_nats", _FORMAT["mean_kl_nats"]),
    ("p99 KL (nats)", "p99_kl_nats", lambda v: f"{v:.4f}"),
    ("top-1 %", "top1_agreement_percent", _FORMAT["top1_agreement_percent"]),
    ("result", "result", str),
)
_TEXT_COLUMNS = {"model", "recipe", "device", "kernel", "result"}


def cells(rows: Rows) -> tuple[list[str], list[list[str]]]:
    """The report's header and one row of formatted cells per model x recipe ("-": not measured)."""
    header = [title for title, _, _ in REPORT_COLUMNS]
    body = [[fmt(row[key]) if row.get(key) not in (None, "") else "-" for _, key, fmt in REPORT_COLUMNS]
            for row in rows.pairs.values()]
    return header, body


def report_path(value: Path | None, base: Path) -> Path | None:
    """The report file, absolute against the invocation directory; a usage error for other suffixes."""
    if value is None:
        return None
    if value.suffix.lower() not in SUFFIXES:
        raise pytest.UsageError(
            f"--quant-report {str(value)!r}: unsupported suffix {value.suffix or '(none)'!r}; "
            f"accepted: {', '.join(SUFFIXES)}"
        )
    return value if value.is_absolute() else base / value


# -- what was run ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    started: datetime
    devices: tuple[str, ...] = ()
    hardware: tuple[str, ...] = ()
    eval_tokens: tuple[int, ...] = ()
    eval_text: str = ""
    args: tuple[str, ...] = ()
    version: str = __version__

    @classmethod
    def of(cls, rows: Rows, *, started: datetime, device: str, eval_text: str = "", args=()) -> "RunInfo":
        def seen(key: str) -> tuple:
            return tuple(dict.fromkeys(r[key] for r in rows.pairs.values() if r.get(key) not in (None, "")))

        return cls(started, seen("device") or (device,), seen("hardware"), seen("eval_tokens"), eval_text, tuple(args))

    def items(self) -> list[tuple[str, str]]:
        """(label, text) lines of the report's header."""
        out = [("date", self.started.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")),
               ("pytest-quant", self.version), ("device", ", ".join(self.devices))]
        if self.hardware:
            out.append(("hardware", ", ".join(self.hardware)))
        if self.eval_tokens:
            tokens = ", ".join(str(n) for n in self.eval_tokens)
            out.append(("eval tokens", f"{tokens} of {self.eval_text}" if self.eval_text else tokens))
        if self.args:
            out.append(("command", "pytest " + shlex.join(self.args)))
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "started_utc": self.started.astimezone(timezone.utc).isoformat(timespec="seconds"),
            "pytest_quant_version": self.version,
            "devices": list(self.devices),
            "hardware": list(self.hardware),
            "eval_tokens": list(self.eval_tokens),
            "eval_text": self.eval_text,
            "args": list(self.args),
        }


# -- the documents --------------------------------------------------------------------------------
def markdown_table(rows: Rows) -> list[str]:
    header, body = cells(rows)
    align = ["---" if key in _TEXT_COLUMNS else "---:" for _, key, _ in REPORT_COLUMNS]
    line = lambda r: "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"  # noqa: E731
    return [line(header), line(align), *map(line, body)]


def markdown(rows: Rows, info: RunInfo, plot_name: str | None = None, plot_note: str | None = None) -> str:
    lines = [f"# {TITLE}", ""]
    lines += [f"- **{label}**: {text if label != 'command' else f'`{text}`'}" for label, text in info.items()]
    lines += ["", *markdown_table(rows), ""]
    if not rows.pairs:
        lines += ["No model x recipe was measured.", ""]
    if plot_name:
        lines += [f"![{PLOT_TITLE}]({plot_name})", ""]
    elif plot_note:
        lines += [f"_{plot_note}_", ""]
    return "\n".join(lines)


def json_document(rows: Rows, info: RunInfo, plot_name: str | None = None) -> dict[str, Any]:
    """Raw numbers, units in the key names (``vram_peak_bytes``, ``decode_tokens_per_s``, ``mean_kl_nats``)."""
    results = []
    for row in rows.pairs.values():
        result = {k: v for k, v in row.items() if k not in ("pair", "result")}
        result["result"] = row.get("result", "pass").lower()
        results.append(result)
    return {"format": "pytest-quant-report", "format_version": 1, "run": info.as_json(),
            "results": results, "plot": plot_name}


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;max-width:80rem;margin:2rem auto;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 1rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:0 0 1.5rem}
dt{color:#59636e}dd{margin:0}code{font-size:.9em}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin-bottom:1.5rem}
th,td{padding:.35rem .75rem;border-bottom:1px solid #d1d9e0;text-align:left;white-space:nowrap}
th{background:#f6f8fa}.num{text-align:right}
td.pass{color:#1a7f37;font-weight:600}td.fail{color:#d1242f;font-weight:600}tr.fail td{background:#fff0ee}
figure{margin:0}figure svg{max-width:100%;height:auto}figcaption{color:#59636e}
""".strip()


def html_document(rows: Rows, info: RunInfo, svg: str | None = None, plot_note: str | None = None) -> str:
    """A page that needs nothing else: inline CSS, the plot as inline SVG."""
    esc = html.escape
    header, body = cells(rows)
    kinds = ["" if key in _TEXT_COLUMNS else "num" for _, key, _ in REPORT_COLUMNS]
    th = "".join(f'<th class="{k}">{esc(h)}</th>' if k else f"<th>{esc(h)}</th>" for h, k in zip(header, kinds))
    trs = []
    for r in body:
        result = r[-1].lower()
        tds = "".join(f'<td class="{k}">{esc(c)}</td>' if k else f"<td>{esc(c)}</td>" for c, k in zip(r[:-1], kinds))
        trs.append(f'<tr class="{result}">{tds}<td class="{result}">{esc(r[-1])}</td></tr>')
    dl = "".join(f"<dt>{esc(label)}</dt><dd>{f'<code>{esc(text)}</code>' if label == 'command' else esc(text)}</dd>"
                 for label, text in info.items())
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{TITLE}</title><style>{_CSS}</style></head><body>",
        f"<h1>{TITLE}</h1>", f"<dl>{dl}</dl>",
        f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(trs)}</tbody></table>",
    ]
    if not rows.pairs:
        parts.append("<p>No model x recipe was measured.</p>")
    if svg:
        parts.append(f"<figure>{svg}<figcaption>{esc(PLOT_TITLE)}</figcaption></figure>")
    elif plot_note:
        parts.append(f"<p><em>{esc(plot_note)}</em></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- the plot -------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def plottable(rows: Rows) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows with both a memory figure and a perplexity; the pair ids of the others."""
    ok, left_out = [], []
    for pair, row in rows.pairs.items():
        if _number(row.get("vram_peak_bytes")) is not None and _number(row.get("perplexity")) is not None:
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
        on_gpu = any(d.startswith("cuda") for d in devices)
        for r in mine:
            x, y = float(r["vram_peak_bytes"]) / MIB, float(r["perplexity"])
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
        ax.set_xlabel("VRAM peak (MiB)" if on_gpu else "memory footprint on CPU (MiB)")
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
    centres = [(ax.transData.transform((float(r["vram_peak_bytes"]) / MIB, float(r["perplexity"]))),
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
            text = ax.annotate(row.get("recipe", "?"), (float(row["vram_peak_bytes"]) / MIB, float(row["perplexity"])),
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


# -- files ----------------------------------------------------------------------------------------
def atomic_write(path: Path, data: str | bytes) -> None:
    """Write through a temporary file in the same folder and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would surprise whoever collects the report
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(path: Path, rows: Rows, info: RunInfo) -> list[str]:
    """Write the report (its format from the suffix) and the plot ``<stem>.png`` beside it; the terminal lines."""
    kind = path.suffix.lower()
    plot = render_plot(rows, path.with_suffix(".png"), svg=kind == ".html")
    plot_name = plot.png.name if plot.png else None
    if kind == ".md":
        text = markdown(rows, info, plot_name, plot.note)
    elif kind == ".json":
        text = json.dumps(json_document(rows, info, plot_name), indent=2, ensure_ascii=False, default=str) + "\n"
    elif kind == ".html":
        text = html_document(rows, info, plot.svg, plot.note)
    else:
        raise ValueError(f"{path}: unsupported suffix; accepted: {', '.join(SUFFIXES)}")
    atomic_write(path, text)
    lines = [f"pytest-quant report: {plot.note}"] if plot.note else []
    return lines + [f"pytest-quant report: {path}" + (f" (plot: {plot.png})" if plot.png else "")]


def append_step_summary(rows: Rows, info: RunInfo, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Append the Markdown table to the file GitHub Actions names in ``$GITHUB_STEP_SUMMARY``."""
    target = environ.get(STEP_SUMMARY_ENV)
    if not target or not rows.pairs:
        return None
    header = " · ".join(f"{label} {text}" for label, text in info.items() if label in ("device", "hardware", "eval tokens"))
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join([f"### {TITLE}", "", header, "", *markdown_table(rows), "", ""]))
    return path


class ReportFiles:
    """The session's ``--quant-report`` and step summary, written once by the process that has every row:
    the xdist controller, or the only process without xdist (workers have ``config.workerinput``)."""

    def __init__(self, config: pytest.Config, options) -> None:
        self.config = config
        self.options = options
        self.path = report_path(options.report, config.invocation_params.dir)
        self.started = datetime.now(timezone.utc)

    def write(self, rows: Rows) -> list[str]:
        if hasattr(self.config, "workerinput"):
            return []
        eval_text = Path(self.options.eval_text).name if self.options.eval_text else ""
        info = RunInfo.of(rows, started=self.started, device=self.options.device, eval_text=eval_text,
                          args=self.config.invocation_params.args)
        lines = []
        try:
            append_step_summary(rows, info)
        except OSError as exc:
            lines.append(f"pytest-quant report: could not append to ${STEP_SUMMARY_ENV}: {exc}")
        if self.path is not None:
            try:
                lines += write_report(self.path, rows, info)
            except OSError as exc:
                lines.append(f"pytest-quant report: could not write {self.path}: {exc}")
        return lines
